"""``memory://``: blobs in a dict, with an optional size limit (``memory://?max_bytes=N``)."""

from __future__ import annotations

import bisect
import builtins
import hashlib
from urllib.parse import parse_qs, urlsplit

from nexus.hooks import Clock, SystemClock
from nexus.raw._errors import RawKeyError, RawNotFoundError, RawQuotaError
from nexus.raw._port import DEFAULT_CONTENT_TYPE, RawBackend, RawPage, RawStat, check_key, check_list_args


class MemoryRaw(RawBackend):
    """The in-process backend; it defines the semantics the others must match.

    No method awaits before it has finished, so every operation is atomic under asyncio.

    Args:
        max_bytes: Total size the stored blobs may take (None: no limit).
        clock: Where ``created`` comes from.
    """

    def __init__(self, max_bytes: int | None = None, *, clock: Clock | None = None, url: str = "memory://") -> None:
        self.url = url
        self.max_bytes = max_bytes
        self._clock = clock or SystemClock()
        self._blobs: dict[str, tuple[bytes, RawStat]] = {}
        self._keys: builtins.list[str] = []
        self.used_bytes = 0

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> MemoryRaw:
        query = parse_qs(urlsplit(url).query)
        max_bytes = None
        if "max_bytes" in query:
            try:
                max_bytes = int(query["max_bytes"][0])
            except ValueError:
                raise RawKeyError(f"NEXUS_RAW_URL {url!r}: max_bytes must be an integer") from None
        return cls(max_bytes, clock=clock, url=url)

    async def store(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat:
        check_key(key)
        data = bytes(data)
        old = self._blobs.get(key)
        used = self.used_bytes - (len(old[0]) if old else 0) + len(data)
        if self.max_bytes is not None and used > self.max_bytes:
            raise RawQuotaError(
                f"storing {len(data)} bytes under {key!r} would use {used} of {self.max_bytes} bytes; nothing stored"
            )
        stat = RawStat(
            key=key,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type=content_type,
            created=self._clock.now(),
        )
        if old is None:
            bisect.insort(self._keys, key)
        self._blobs[key] = (data, stat)
        self.used_bytes = used
        return stat

    async def store_if_absent(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat | None:
        check_key(key)
        if key in self._blobs:
            return None
        return await self.store(key, data, content_type)

    async def retrieve(self, key: str) -> bytes:
        return self._get(key)[0]

    async def exists(self, key: str) -> bool:
        check_key(key)
        return key in self._blobs

    async def stat(self, key: str) -> RawStat:
        return self._get(key)[1]

    def _get(self, key: str) -> tuple[bytes, RawStat]:
        check_key(key)
        found = self._blobs.get(key)
        if found is None:
            raise RawNotFoundError(key)
        return found

    async def list(self, prefix: str = "", cursor: str | None = None, limit: int = 1000) -> RawPage:
        check_list_args(prefix, cursor, limit)
        start = (
            bisect.bisect_right(self._keys, cursor) if cursor is not None else bisect.bisect_left(self._keys, prefix)
        )
        keys: builtins.list[str] = []
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                if key > prefix:
                    break
                continue
            keys.append(key)
            if len(keys) == limit:
                break
        more = bool(keys) and len(keys) == limit and self._has_after(keys[-1], prefix)
        return RawPage(keys, keys[-1] if more else None)

    def _has_after(self, key: str, prefix: str) -> bool:
        index = bisect.bisect_right(self._keys, key)
        return index < len(self._keys) and self._keys[index].startswith(prefix)

    async def delete(self, key: str) -> None:
        data, _ = self._get(key)
        del self._blobs[key]
        self._keys.pop(bisect.bisect_left(self._keys, key))
        self.used_bytes -= len(data)
