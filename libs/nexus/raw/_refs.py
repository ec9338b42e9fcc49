"""References (seed 002) and tenant namespaces.

``put_value`` stores a JSON value in Raw when its encoding reaches the threshold (1 KB) and
returns a ``raw://KEY`` reference; ``put_ref`` does the same with seed 002's tiers (inline,
``kv://namespace/key``, ``r2://bucket/path``; ``nexus.raw._tiers``). ``resolve`` turns any of
these references back into the value and returns anything else unchanged. A string that itself
looks like a reference is always stored, never inlined, so an inline value is never mistaken
for a reference.

A tenant's keys live under ``t/<tenant>/`` (``tenant_key``); every other key belongs to the
platform (``key_tenant``). Given a ``tenant``, ``put_value`` stores in that namespace and
``resolve`` refuses, exactly as a missing key, a reference into another tenant's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from nexus.proto import PLATFORM_TENANT
from nexus.raw._errors import RawKeyError, RawNotFoundError
from nexus.raw._port import RawBackend, check_key
from nexus.raw._tiers import TIER_SCHEMES, RefPolicy, default_policy

REF_SCHEME = "raw://"
INLINE_LIMIT = 1024
"""Values whose JSON encoding is shorter than this many bytes stay inline."""
REF_PREFIX = "refs/"
TENANTS_ROOT = "t/"
"""Keys under ``t/<tenant>/`` belong to that tenant; every other key to the platform."""

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


def is_ref(value: Any) -> bool:
    """Whether ``value`` is a reference: ``raw://KEY``, ``kv://NS/KEY`` or ``r2://BUCKET/PATH``."""
    return isinstance(value, str) and (value.startswith(REF_SCHEME) or value.startswith(TIER_SCHEMES))


def is_tier_ref(value: Any) -> bool:
    """Whether ``value`` is a ``kv://`` or ``r2://`` reference (relative to a tenant)."""
    return isinstance(value, str) and value.startswith(TIER_SCHEMES)


def ref_key(ref: str, *, tenant: str | None = None, policy: RefPolicy | None = None) -> str:
    """The Raw key a reference points to.

    A ``raw://KEY`` names ``KEY`` whoever asks. A ``kv://`` or ``r2://`` reference names a key
    in ``tenant``'s namespace (``t/<tenant>/kv/NS/KEY``), or in the platform's when ``tenant``
    is None or the platform: the same text names another key for another tenant.

    Raises:
        RawKeyError: ``ref`` is not a reference, or names a key that could leave the store
            (``raw://../../etc/passwd``); a caller's mistake, never worth a retry.
    """
    if is_tier_ref(ref):
        placed = (policy or default_policy()).place(ref)
        if tenant is None or tenant == PLATFORM_TENANT:
            return placed
        return check_key(tenant_prefix(tenant) + placed)
    if not is_ref(ref):
        raise RawKeyError(f"{ref!r} is not a raw://, kv:// or r2:// reference")
    return check_key(ref[len(REF_SCHEME) :])


def tenant_prefix(tenant: str) -> str:
    """``t/<tenant>/``: the prefix of every key in the tenant's namespace.

    Raises:
        RawKeyError: ``tenant`` is empty or is not a single key segment.
    """
    if not isinstance(tenant, str) or "/" in tenant:
        raise RawKeyError(f"tenant {tenant!r} cannot name a Raw namespace (one segment, no '/')")
    check_key(tenant)
    return f"{TENANTS_ROOT}{tenant}/"


def tenant_key(tenant: str, *parts: str) -> str:
    """``t/<tenant>/<parts…>``: a key in the tenant's namespace, each part checked.

    A part may itself hold ``/`` (``tenant_key("acme", "uploads/a.json")``); none may leave the
    namespace (``..``), be absolute or hold control characters.

    Raises:
        RawKeyError: the tenant or a part is not acceptable, or no part is given.
    """
    if not parts:
        raise RawKeyError(f"tenant_key({tenant!r}) needs at least one part after the tenant")
    for part in parts:
        check_key(part)
    return check_key(tenant_prefix(tenant) + "/".join(parts))


def key_tenant(key: str) -> str:
    """The tenant that owns ``key``: ``<tenant>`` for ``t/<tenant>/…``, else ``platform``.

    Raises:
        RawKeyError: the key is not acceptable.
    """
    check_key(key)
    if key.startswith(TENANTS_ROOT):
        return key.split("/", 2)[1]
    return PLATFORM_TENANT


def ref_tenant(ref: str, *, tenant: str | None = None, policy: RefPolicy | None = None) -> str:
    """The tenant that owns the key a reference points to (``tenant`` itself for a tier reference
    resolved on its behalf: see ``ref_key``).

    Raises:
        RawKeyError: ``ref`` is not a reference, or its key is not acceptable.
    """
    return key_tenant(ref_key(ref, tenant=tenant, policy=policy))


async def put_value(
    raw: RawBackend,
    value: Any,
    *,
    key: str | None = None,
    threshold: int = INLINE_LIMIT,
    tenant: str | None = None,
) -> Any:
    """The value itself when small, else a ``raw://KEY`` reference to it stored in ``raw``.

    Args:
        raw: Where large values go.
        value: Any JSON value.
        key: The key to store under (default: ``refs/<sha256 of the encoding>``, so the
            same value is stored once; ``t/<tenant>/refs/<sha256>`` with a ``tenant``).
        threshold: Encodings of at least this many bytes are stored.
        tenant: The tenant that owns the value; a given ``key`` must be in its namespace.

    Raises:
        RawKeyError: ``key`` is not acceptable, or lies outside ``tenant``'s namespace.
    """
    encoded = _encoder.encode(value)
    if len(encoded) < threshold and not _looks_like_ref(value):
        return value
    if key is not None:
        check_key(key)
        if tenant is not None and key_tenant(key) != tenant:
            raise RawKeyError(f"Raw key {key!r} is outside tenant {tenant!r}'s namespace {tenant_prefix(tenant)!r}")
    else:
        digest = REF_PREFIX + hashlib.sha256(encoded).hexdigest()
        key = digest if tenant is None else tenant_key(tenant, digest)
    await raw.store(key, encoded, "application/json")
    return REF_SCHEME + key


def _looks_like_ref(value: Any) -> bool:
    """A string any scheme could take for a reference: stored rather than inlined."""
    return isinstance(value, str) and (is_ref(value) or value[:5].lower() in ("raw:/", "kv://", "r2://"))


async def put_ref(
    raw: RawBackend,
    value: Any,
    *,
    namespace: str,
    name: str | None = None,
    tenant: str | None = None,
    policy: RefPolicy | None = None,
) -> Any:
    """Seed 002's tiers: ``value`` itself under the inline limit, else ``kv://namespace/name`` up
    to the kv limit, else ``r2://namespace/name`` (the namespace is the bucket), stored in
    ``raw`` inside ``tenant``'s namespace.

    Args:
        raw: The platform's Raw.
        value: Any JSON value.
        namespace: The reference's namespace (``kv``) or bucket (``r2``): one key segment.
        name: The key or path inside it (default: the sha256 of the encoding, so equal values
            share one blob).
        tenant: The owner; None for the platform.
        policy: Limits and placement (default: ``NEXUS_REF_*``).

    Raises:
        RawKeyError: the namespace or name is not acceptable.
    """
    policy = policy or default_policy()
    encoded = _encoder.encode(value)
    tier = policy.tier(len(encoded))
    if tier == "inline" and not _looks_like_ref(value):
        return value
    if "/" in namespace:
        raise RawKeyError(f"namespace {namespace!r} is one key segment (no '/')")
    check_key(namespace)
    name = name if name is not None else hashlib.sha256(encoded).hexdigest()
    ref = f"r2://{namespace}/{name}" if tier == "r2" else f"kv://{namespace}/{name}"
    await raw.store(ref_key(ref, tenant=tenant, policy=policy), encoded, "application/json")
    return ref


async def resolve(
    raw: RawBackend, value_or_ref: Any, *, tenant: str | None = None, policy: RefPolicy | None = None
) -> Any:
    """The value a reference points to, or ``value_or_ref`` itself when it is inline.

    Args:
        raw: Where the referenced value is.
        value_or_ref: A ``raw://KEY``, ``kv://NS/KEY`` or ``r2://BUCKET/PATH`` reference, or an
            inline value.
        tenant: Resolve on behalf of this tenant: a ``raw://`` reference into another tenant's
            namespace is answered as if nothing were stored there, and a tier reference names a
            key in this tenant's namespace. None (an admin, or the platform reading its own
            references) reads any ``raw://`` key and the platform's tier keys.
        policy: Where tier references are placed (default: ``NEXUS_REF_*``).

    Raises:
        RawKeyError: the reference's key could leave the store (a 400, not a retry).
        RawNotFoundError: the key holds nothing, or belongs to another tenant than ``tenant``.
    """
    if not is_ref(value_or_ref):
        return value_or_ref
    key = ref_key(value_or_ref, tenant=tenant, policy=policy)
    if tenant is not None and key_tenant(key) != tenant:
        raise RawNotFoundError(key)
    data = await raw.retrieve(key)
    return _decoder.decode(data)
