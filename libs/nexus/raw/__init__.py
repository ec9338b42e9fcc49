"""Raw: blob storage with pluggable backends, opened by URL at the composition root.

::

    raw = await open_raw("file:///var/nexus/raw")      # or memory://?max_bytes=N, mongodb://host/db
    await raw.store("reports/2026-01.json", data, "application/json")
    data = await raw.retrieve("reports/2026-01.json")

Backends: ``memory.py`` (tests, with a size limit), ``file.py`` (embedded default: small
blobs as rows of one SQLite database, larger ones as files, concurrent stores committed
together), ``mongo.py`` (GridFS), ``postgres.py`` (rows of a PostgreSQL database, large blobs
in 1 MiB chunks). All pass the same contract suite. ``store_if_absent`` writes
only when the key is free (content-addressed keys); a backend may do it in one step.

Every key and prefix is checked in one place (``check_key``, ``check_prefix``) before any
backend touches it: nothing can name a path outside the store. A tenant's blobs live under
``t/<tenant>/`` (``tenant_key``; ``key_tenant`` tells whose a key is).

References (seed 002): ``raw://KEY``, and the tiers ``kv://namespace/key`` and
``r2://bucket/path`` placed in a tenant's namespace by a ``RefPolicy`` (``put_ref``,
``resolve``); a value under 1 KB travels inline.
"""

from __future__ import annotations

from nexus.hooks import Clock
from nexus.raw._errors import RawError, RawKeyError, RawNotFoundError, RawQuotaError, RawUnavailableError
from nexus.raw._port import DEFAULT_CONTENT_TYPE, MAX_KEY_LENGTH, RawBackend, RawPage, RawStat, check_key, check_prefix
from nexus.raw._refs import (
    INLINE_LIMIT,
    REF_SCHEME,
    TENANTS_ROOT,
    is_ref,
    is_tier_ref,
    key_tenant,
    put_ref,
    put_value,
    ref_key,
    ref_tenant,
    resolve,
    tenant_key,
    tenant_prefix,
)
from nexus.raw._storage import RawStorage
from nexus.raw._tiers import KV_SCHEME, R2_SCHEME, RefPolicy, default_policy

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "INLINE_LIMIT",
    "KV_SCHEME",
    "MAX_KEY_LENGTH",
    "R2_SCHEME",
    "REF_SCHEME",
    "TENANTS_ROOT",
    "RawBackend",
    "RawError",
    "RawKeyError",
    "RawNotFoundError",
    "RawPage",
    "RawQuotaError",
    "RawStat",
    "RawStorage",
    "RawUnavailableError",
    "RefPolicy",
    "check_key",
    "check_prefix",
    "default_policy",
    "is_ref",
    "is_tier_ref",
    "key_tenant",
    "open_raw",
    "put_ref",
    "put_value",
    "ref_key",
    "ref_tenant",
    "resolve",
    "tenant_key",
    "tenant_prefix",
]


async def open_raw(url: str, *, clock: Clock | None = None) -> RawBackend:
    """Open the blob store named by ``url`` (``memory://``, ``file://PATH``, ``mongodb://HOST/DB``,
    ``postgresql://HOST/DB``).

    Raises:
        RawKeyError: the URL is malformed or names an unknown scheme.
        RawUnavailableError: the backend cannot be reached.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from nexus.raw.memory import MemoryRaw

        return MemoryRaw.from_url(url, clock=clock)
    if scheme == "file":
        from nexus.raw.file import FileRaw

        return FileRaw.from_url(url, clock=clock)
    if scheme in ("mongodb", "mongodb+srv"):
        from nexus.raw.mongo import MongoRaw

        return await MongoRaw.open(url, clock=clock)
    if scheme in ("postgresql", "postgres"):
        from nexus.raw.postgres import PostgresRaw

        return await PostgresRaw.open(url, clock=clock)
    raise RawKeyError(
        f"NEXUS_RAW_URL {url!r}: unknown scheme {scheme!r} "
        "(use memory://, file://PATH, mongodb://HOST/DB or postgresql://HOST/DB)"
    )
