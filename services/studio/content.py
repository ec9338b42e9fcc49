"""Blob content: its three kinds, how each travels in JSON, and where it lives in Raw.

A content type decides the kind, and the kind decides everything else (how the content is
written in a request and an answer, and how a change is recorded as deltas):

- **json** (``application/json``, any ``*/*+json``): ``content`` is a JSON value. It is stored
  as its canonical encoding (object keys sorted, no spaces), so two equal documents are the
  same bytes, stored once, and the deltas between versions are RFC 6902 patches.
- **text** (``text/*``, and ``application/xml``, ``application/yaml``, ``application/x-yaml``,
  ``application/javascript``, any ``*/*+xml``): ``content`` is a string, stored as UTF-8;
  deltas are line hunks.
- **binary** (anything else): ``content_base64`` carries the bytes; a change is a replace.

``content_base64`` is accepted for every kind (a JSON document must then decode to JSON, a text
to UTF-8): it is how a client sends bytes it does not want to decode. Content lives in Raw
under ``t/<owner>/studio/sha256/<hex>``, written only when absent: equal content of one owner
is stored once, whatever the blobs and versions that hold it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from typing import Any, Literal

import msgspec

from nexus.raw import REF_SCHEME, RawBackend, tenant_key

__all__ = [
    "MAX_CONTENT_DEPTH",
    "ContentError",
    "Kind",
    "canonical_json",
    "content_key",
    "content_ref",
    "decode_json",
    "encode_content",
    "kind_of",
    "present",
    "store_content",
]

Kind = Literal["json", "text", "binary"]

MAX_CONTENT_DEPTH = 64
"""The deepest nesting of arrays and objects a JSON blob may have: the same bound as a request
body's, so a document the API accepted can always be read, diffed and patched (jsonpatch
recurses once per level)."""

_TEXT_TYPES = frozenset(
    {"application/xml", "application/yaml", "application/x-yaml", "application/javascript", "application/toml"}
)

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


class ContentError(ValueError):
    """Content that does not fit its content type (or any bound); the message names the problem."""


_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""``type/subtype`` as RFC 9110 spells tokens."""
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


@functools.lru_cache(maxsize=1024)
def kind_of(content_type: str) -> Kind:
    """The kind of content a content type holds (see the module)."""
    media = _media_type(content_type)
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media.startswith("text/") or media in _TEXT_TYPES or media.endswith("+xml"):
        return "text"
    return "binary"


def check_content_type(content_type: str) -> str:
    """``content_type`` when it is a media type (``type/subtype``, optional parameters); raise
    ContentError otherwise."""
    if (
        len(content_type) > 255
        or not content_type.isprintable()
        or not _MEDIA_TYPE.fullmatch(_media_type(content_type))
    ):
        raise ContentError(f"content_type {content_type[:80]!r} is not a media type (type/subtype, e.g. text/markdown)")
    return content_type


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects deeper than ``limit`` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, dict | list))
        elif isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return False


def canonical_json(value: Any) -> bytes:
    """The canonical encoding of a JSON value: keys sorted, no spaces (equal values, equal bytes).

    Raises:
        ContentError: ``value`` is not JSON (a NaN, a set, a non-string key...) or nests deeper
            than :data:`MAX_CONTENT_DEPTH`.
    """
    try:
        data = _encoder.encode(value)
    except RecursionError:
        raise ContentError(f"JSON content nests deeper than {MAX_CONTENT_DEPTH} levels") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ContentError(f"content is not a JSON value: {exc}") from None
    if data.count(b"[") + data.count(b"{") > MAX_CONTENT_DEPTH and _depth_exceeds(value, MAX_CONTENT_DEPTH):
        raise ContentError(f"JSON content nests deeper than {MAX_CONTENT_DEPTH} levels")
    return data


def decode_json(data: bytes) -> Any:
    """The JSON value ``data`` holds.

    Raises:
        ContentError: ``data`` is not JSON or nests deeper than :data:`MAX_CONTENT_DEPTH`.
    """
    try:
        value = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ContentError(f"content is not JSON: {exc}") from None
    if data.count(b"[") + data.count(b"{") > MAX_CONTENT_DEPTH and _depth_exceeds(value, MAX_CONTENT_DEPTH):
        raise ContentError(f"JSON content nests deeper than {MAX_CONTENT_DEPTH} levels")
    return value


def encode_content(
    content_type: str, content: Any = None, content_base64: str | None = None, *, has_content: bool = True
) -> bytes:
    """The bytes to store for content given as the API takes it (see the module).

    ``content`` is a JSON value (json), a string (text), or ``bytes`` (any kind: taken as the
    stored bytes, checked to fit the kind). ``has_content`` False means only ``content_base64``
    was given.

    Raises:
        ContentError: the content does not fit the content type, both or neither form is given,
            or the base64 is malformed.
    """
    kind = kind_of(content_type)
    if content_base64 is not None:
        if has_content:
            raise ContentError("give content or content_base64, not both")
        try:
            data = base64.b64decode(content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ContentError("content_base64 is not valid base64") from None
        return _fit(kind, data, "content_base64")
    if not has_content:
        raise ContentError(
            "content is missing: a JSON value for JSON types, a string for text types, content_base64 otherwise"
        )
    if isinstance(content, bytes | bytearray | memoryview):
        return _fit(kind, bytes(content), "content")
    if kind == "json":
        return canonical_json(content)
    if kind == "text":
        if not isinstance(content, str):
            raise ContentError(f"content of type {content_type} must be a string (got {type(content).__name__})")
        try:
            return content.encode("utf-8")
        except UnicodeEncodeError:
            raise ContentError("content holds a lone surrogate; it cannot be stored as UTF-8") from None
    raise ContentError(f"content of type {content_type} is binary: send it as content_base64")


def _fit(kind: Kind, data: bytes, field: str) -> bytes:
    if kind == "json":
        return canonical_json(decode_json(data))
    if kind == "text":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ContentError(f"{field} of a text type must be UTF-8") from None
    return data


def present(content_type: str, data: bytes) -> dict[str, Any]:
    """How stored content is answered: ``{"content": value}`` (json, text) or ``{"content_base64": ...}``."""
    kind = kind_of(content_type)
    if kind == "json":
        return {"content": decode_json(data)}
    if kind == "text":
        return {"content": data.decode("utf-8", errors="replace")}
    return {"content_base64": base64.b64encode(data).decode("ascii")}


@functools.lru_cache(maxsize=4096)
def _content_prefix(owner: str) -> str:
    # The owner is checked once (one key segment); a hex digest after it is always a valid key.
    return tenant_key(owner, "studio/sha256") + "/"


def content_key(owner: str, sha256: str) -> str:
    """``t/<owner>/studio/sha256/<hex>``: the Raw key of the owner's content with this digest.

    Raises:
        RawKeyError: ``owner`` cannot name a Raw namespace.
        ValueError: ``sha256`` is not a hex digest.
    """
    if not _HEX_DIGEST.fullmatch(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 hex digest")
    return _content_prefix(owner) + sha256


def content_ref(owner: str, sha256: str) -> str:
    """``raw://t/<owner>/studio/sha256/<hex>``: where the owner's content with this digest lives."""
    return REF_SCHEME + content_key(owner, sha256)


async def store_content(raw: RawBackend, owner: str, data: bytes, content_type: str) -> tuple[str, str]:
    """Store ``data`` in the owner's content-addressed namespace unless it is already there.

    Returns:
        (the ``raw://`` reference, the sha256 in hex).
    """
    digest = hashlib.sha256(data).hexdigest()
    key = content_key(owner, digest)
    ref = REF_SCHEME + key
    # Equal content has one key: two writers racing store the same bytes, so no lock is needed.
    # One call rather than exists-then-store: the file Raw looks the key up in the batch that
    # would write it.
    await raw.store_if_absent(key, data, _media_type(content_type) or "application/octet-stream")
    return ref, digest
