"""The Raw port: what every blob backend (memory, file, GridFS) provides."""

from __future__ import annotations

import abc
import builtins
import re

import msgspec

from nexus.raw._errors import RawKeyError

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_BAD_CHARACTER = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
"""A control character (NUL, newline, DEL...) or a lone surrogate: no key may hold one."""
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

    async def store_if_absent(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat | None:
        """Store ``data`` under ``key`` unless a blob is already there; None when one was.

        For content-addressed keys (equal content, equal key), where storing again would only
        write the same bytes. This default looks the key up, then stores; a backend that can
        do both in one step (the file store's batches) does. Two calls racing on one key may
        both store it: the key then holds one of them.

        Raises:
            RawKeyError, RawQuotaError, RawUnavailableError: as ``store``.
        """
        if await self.exists(key):
            return None
        return await self.store(key, data, content_type)

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

    async def list_all(self, prefix: str = "") -> builtins.list[str]:
        """Every key starting with ``prefix`` (all pages of ``list``)."""
        keys: builtins.list[str] = []
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
    backslashes, NUL or other control characters, at most 1024 characters. Every backend
    checks every key here, so no key reaches a file system path or a query unchecked.
    """
    if not isinstance(key, str) or not key:
        raise RawKeyError(f"a Raw key is a non-empty string, got {key!r}")
    _check_path(key, "key", allow_trailing_slash=False)
    return key


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` when it can start a key; raise RawKeyError naming the problem.

    The same rules as ``check_key`` (no ``..``, no absolute path, no backslash or control
    character, bounded length), except that the empty prefix (every key) and a trailing ``/``
    (``"a/b/"``: the keys under ``a/b``) are allowed.
    """
    if not isinstance(prefix, str):
        raise RawKeyError(f"a Raw prefix is a string, got {prefix!r}")
    if prefix:
        _check_path(prefix, "prefix", allow_trailing_slash=True)
    return prefix


def _check_path(path: str, what: str, *, allow_trailing_slash: bool) -> None:
    if len(path) > MAX_KEY_LENGTH:
        raise RawKeyError(f"Raw {what} is {len(path)} characters long; the limit is {MAX_KEY_LENGTH}")
    if path.startswith("/"):
        raise RawKeyError(f"Raw {what} {path!r} is absolute; keys are relative paths like 'a/b.json'")
    if "\\" in path:
        raise RawKeyError(f"Raw {what} {path!r} contains a backslash; keys are '/'-separated")
    # One regular expression scan (in C) rather than a Python loop over the characters: every
    # store and lookup checks its key, in the event loop.
    bad = _BAD_CHARACTER.search(path)
    if bad is not None and not 0xD800 <= ord(bad.group()) <= 0xDFFF:
        raise RawKeyError(f"Raw {what} {path!r} contains the control character {bad.group()!r} (NUL, newline, …)")
    if bad is not None:
        # A lone surrogate (from undecodable bytes) has no UTF-8 form: no backend could store it.
        raise RawKeyError(f"Raw {what} {path!r} is not valid Unicode (it holds a lone surrogate)")
    segments = path.split("/")
    if allow_trailing_slash and len(segments) > 1 and segments[-1] == "":
        segments.pop()
    for segment in segments:
        if segment in ("", ".", ".."):
            raise RawKeyError(f"Raw {what} {path!r} has an empty, '.' or '..' segment (keys cannot leave the store)")


def check_list_args(prefix: object, cursor: object, limit: object) -> None:
    """Check ``list``'s arguments; raise RawKeyError naming the one that is not acceptable."""
    check_prefix(prefix)
    if cursor is not None and (not isinstance(cursor, str) or len(cursor) > MAX_KEY_LENGTH):
        raise RawKeyError(f"cursor must be None or a key of at most {MAX_KEY_LENGTH} characters, got {cursor!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise RawKeyError(f"limit must be an integer >= 1, got {limit!r}")
