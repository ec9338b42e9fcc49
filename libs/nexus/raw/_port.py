"""The Raw port: what every blob backend (memory, file, GridFS) provides."""

from __future__ import annotations

import abc

import msgspec

from nexus.raw._errors import RawKeyError

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_KEY_LENGTH = 1024


class RawStat(msgspec.Struct, frozen=True, kw_only=True):
    """What is known about a stored blob."""

    key: str
    size: int
    """Length in bytes."""
    sha256: str
    """sha256 of the content, hex."""
    content_type: str = DEFAULT_CONTENT_TYPE
    created: float
    """When this content was stored (seconds since the epoch, from the backend's clock)."""


class RawPage(msgspec.Struct, frozen=True):
    """One page of ``list``: keys in ascending order and where the next page starts."""

    keys: list[str]
    cursor: str | None
    """Pass it to ``list`` for the next page; None on the last page."""


class RawBackend(abc.ABC):
    """Blobs under string keys (``path/like/keys``), each stored whole or not at all."""

    url: str = ""

    @abc.abstractmethod
    async def store(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat:
        """Store ``data`` under ``key``, replacing any blob there.

        Raises:
            RawKeyError: the key is not acceptable.
            RawQuotaError: the backend's size limit would be exceeded; nothing was stored.
            RawUnavailableError: the backend failed; the previous blob (if any) is intact.
        """

    @abc.abstractmethod
    async def retrieve(self, key: str) -> bytes:
        """The blob's content.

        Raises:
            RawNotFoundError: nothing is stored under ``key``.
        """

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    @abc.abstractmethod
    async def stat(self, key: str) -> RawStat:
        """Size, sha256, content type and creation time of the blob.

        Raises:
            RawNotFoundError: nothing is stored under ``key``.
        """

    @abc.abstractmethod
    async def list(self, prefix: str = "", cursor: str | None = None, limit: int = 1000) -> RawPage:
        """Keys starting with ``prefix``, ascending, after ``cursor``, at most ``limit`` of them."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob.

        Raises:
            RawNotFoundError: nothing is stored under ``key``.
        """

    async def list_all(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (all pages of ``list``)."""
        keys: list[str] = []
        cursor: str | None = None
        while True:
            page = await self.list(prefix, cursor)
            keys.extend(page.keys)
            if page.cursor is None:
                return keys
            cursor = page.cursor

    async def close(self) -> None:
        """Release the backend's resources."""
        return None

    async def __aenter__(self) -> RawBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def check_key(key: object) -> str:
    """Return ``key`` when every backend can store it; raise RawKeyError naming the problem.

    A key is a relative, ``/``-separated path: no empty, ``.`` or ``..`` segments, no
    backslashes or NUL characters, at most 1024 characters.
    """
    if not isinstance(key, str) or not key:
        raise RawKeyError(f"a Raw key is a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise RawKeyError(f"Raw key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    if key.startswith("/"):
        raise RawKeyError(f"Raw key {key!r} is absolute; keys are relative paths like 'a/b.json'")
    if "\\" in key or "\x00" in key:
        raise RawKeyError(f"Raw key {key!r} contains a backslash or NUL character")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise RawKeyError(f"Raw key {key!r} has an empty, '.' or '..' segment (keys cannot leave the store)")
    return key


def check_list_args(prefix: str, cursor: str | None, limit: int) -> None:
    if not isinstance(prefix, str):
        raise RawKeyError(f"prefix must be a string, got {prefix!r}")
    if cursor is not None and not isinstance(cursor, str):
        raise RawKeyError(f"cursor must be None or a key, got {cursor!r}")
    if not isinstance(limit, int) or limit < 1:
        raise RawKeyError(f"limit must be an integer >= 1, got {limit!r}")
