"""Seed 002's storage tiers as a naming and placement policy over Raw.

A value travels in one of three forms, chosen by the size of its JSON encoding:

- **inline** (under ``inline_max``, 1 KB): the value itself, in the message (the seed's
  ``return ref; // Inline data``);
- ``kv://namespace/key`` (up to ``kv_max``, 25 MB);
- ``r2://bucket/path`` (above).

Both reference forms name a blob in the platform's Raw: ``kv://NS/KEY`` is the Raw key
``<kv_prefix>NS/KEY`` and ``r2://BUCKET/PATH`` is ``<r2_prefix>BUCKET/PATH``, each inside the
namespace of the tenant that resolves it (``t/<tenant>/…``). A tier reference is therefore
relative to its tenant: the same text presented by another tenant names a key in that other
tenant's namespace, where nothing was stored for it, so the answer is "not found", never
another tenant's data. ``raw://KEY`` references name an absolute key and keep their own check
(``key_tenant``).

The limits and prefixes are read from the environment (``RefPolicy.from_env``):

``NEXUS_REF_INLINE_MAX``
    Encodings shorter than this many bytes stay inline (default 1024).
``NEXUS_REF_KV_MAX``
    Encodings up to this many bytes become ``kv://`` references, larger ones ``r2://`` (default
    26214400, 25 MiB).
``NEXUS_REF_KV_PREFIX`` / ``NEXUS_REF_R2_PREFIX``
    Where in Raw each tier's blobs are placed (defaults ``kv/`` and ``r2/``); a Raw backend
    that routes by key prefix can thus put each tier on its own storage.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

from nexus.raw._errors import RawKeyError
from nexus.raw._port import check_key

__all__ = ["KV_SCHEME", "R2_SCHEME", "TIER_SCHEMES", "RefPolicy", "default_policy"]

KV_SCHEME = "kv://"
R2_SCHEME = "r2://"
TIER_SCHEMES = (KV_SCHEME, R2_SCHEME)
KV_MAX = 25 * 1024 * 1024


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RawKeyError(f"{name}={text!r}: expected a whole number of bytes") from None
    if value < 0:
        raise RawKeyError(f"{name}={value}: must not be negative")
    return value


def _prefix(env: Mapping[str, str], name: str, default: str) -> str:
    text = env.get(name, "").strip() or default
    if not text.endswith("/"):
        text += "/"
    check_key(text.rstrip("/"))
    return text


@dataclass(frozen=True)
class RefPolicy:
    """Which tier a value goes to, and where each tier's blobs live in Raw."""

    inline_max: int = 1024
    """Encodings shorter than this stay inline."""
    kv_max: int = KV_MAX
    """Encodings up to this size become ``kv://`` references; larger ones ``r2://``."""
    kv_prefix: str = "kv/"
    """Raw key prefix of ``kv://`` blobs (inside the tenant's namespace)."""
    r2_prefix: str = "r2/"
    """Raw key prefix of ``r2://`` blobs (inside the tenant's namespace)."""

    def __post_init__(self) -> None:
        if self.kv_max < self.inline_max:
            raise RawKeyError(f"the kv:// limit ({self.kv_max}) is below the inline limit ({self.inline_max})")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RefPolicy:
        """The policy the ``NEXUS_REF_*`` variables describe (module docstring).

        Raises:
            RawKeyError: a variable is not acceptable (it names itself).
        """
        env = os.environ if env is None else env
        return cls(
            inline_max=_env_int(env, "NEXUS_REF_INLINE_MAX", 1024),
            kv_max=_env_int(env, "NEXUS_REF_KV_MAX", KV_MAX),
            kv_prefix=_prefix(env, "NEXUS_REF_KV_PREFIX", "kv/"),
            r2_prefix=_prefix(env, "NEXUS_REF_R2_PREFIX", "r2/"),
        )

    def tier(self, size: int) -> str:
        """``inline``, ``kv`` or ``r2``: where a value of ``size`` encoded bytes goes."""
        if size < self.inline_max:
            return "inline"
        return "kv" if size <= self.kv_max else "r2"

    def place(self, ref: str) -> str:
        """The Raw key (relative to a tenant's namespace) a ``kv://`` or ``r2://`` reference names.

        Raises:
            RawKeyError: not a tier reference, or it lacks a namespace/bucket and a key/path, or
                names a key that could leave the store.
        """
        for scheme, prefix, parts in (
            (KV_SCHEME, self.kv_prefix, "namespace/key"),
            (R2_SCHEME, self.r2_prefix, "bucket/path"),
        ):
            if ref.startswith(scheme):
                rest = ref[len(scheme) :]
                head, _, tail = rest.partition("/")
                if not head or not tail:
                    raise RawKeyError(f"{ref!r}: a {scheme} reference is {scheme}{parts}")
                return check_key(prefix + rest)
        raise RawKeyError(f"{ref!r} is not a kv:// or r2:// reference")


@functools.cache
def default_policy() -> RefPolicy:
    """The process's policy, read once from the environment."""
    return RefPolicy.from_env()
