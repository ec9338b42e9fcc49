"""Raw: blob storage with pluggable backends, opened by URL at the composition root.

::

    raw = await open_raw("file:///var/nexus/raw")      # or memory://?max_bytes=N, mongodb://host/db
    await raw.store("reports/2026-01.json", data, "application/json")
    data = await raw.retrieve("reports/2026-01.json")

Backends: ``memory.py`` (tests, with a size limit), ``file.py`` (embedded default, atomic
writes), ``mongo.py`` (GridFS). All pass the same contract suite.
"""

from __future__ import annotations

from nexus.atlas import Clock
from nexus.raw._errors import RawError, RawKeyError, RawNotFoundError, RawQuotaError, RawUnavailableError
from nexus.raw._port import DEFAULT_CONTENT_TYPE, RawBackend, RawPage, RawStat, check_key
from nexus.raw._refs import INLINE_LIMIT, REF_SCHEME, is_ref, put_value, ref_key, resolve
from nexus.raw._storage import RawStorage

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "INLINE_LIMIT",
    "REF_SCHEME",
    "RawBackend",
    "RawError",
    "RawKeyError",
    "RawNotFoundError",
    "RawPage",
    "RawQuotaError",
    "RawStat",
    "RawStorage",
    "RawUnavailableError",
    "check_key",
    "is_ref",
    "open_raw",
    "put_value",
    "ref_key",
    "resolve",
]


async def open_raw(url: str, *, clock: Clock | None = None) -> RawBackend:
    """Open the blob store named by ``url`` (``memory://``, ``file://PATH``, ``mongodb://HOST/DB``).

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
    raise RawKeyError(
        f"NEXUS_RAW_URL {url!r}: unknown scheme {scheme!r} (use memory://, file://PATH or mongodb://HOST/DB)"
    )
