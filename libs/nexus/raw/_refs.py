"""References (seed 002): small values travel inline, larger ones as ``raw://KEY`` strings.

``put_value`` stores a JSON value in Raw when its encoding reaches the threshold (1 KB) and
returns the reference; ``resolve`` turns a reference back into the value and returns anything
else unchanged. A string that itself starts with ``raw://`` is always stored, never inlined,
so an inline value is never mistaken for a reference.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from nexus.raw._errors import RawKeyError
from nexus.raw._port import RawBackend, check_key

REF_SCHEME = "raw://"
INLINE_LIMIT = 1024
"""Values whose JSON encoding is shorter than this many bytes stay inline."""
REF_PREFIX = "refs/"

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


def is_ref(value: Any) -> bool:
    """Whether ``value`` is a ``raw://KEY`` reference."""
    return isinstance(value, str) and value.startswith(REF_SCHEME)


def ref_key(ref: str) -> str:
    """The Raw key a reference points to."""
    if not is_ref(ref):
        raise RawKeyError(f"{ref!r} is not a raw:// reference")
    return check_key(ref[len(REF_SCHEME) :])


async def put_value(raw: RawBackend, value: Any, *, key: str | None = None, threshold: int = INLINE_LIMIT) -> Any:
    """The value itself when small, else a ``raw://KEY`` reference to it stored in ``raw``.

    Args:
        raw: Where large values go.
        value: Any JSON value.
        key: The key to store under (default: ``refs/<sha256 of the encoding>``, so the
            same value is stored once).
        threshold: Encodings of at least this many bytes are stored.
    """
    encoded = _encoder.encode(value)
    if len(encoded) < threshold and not is_ref(value):
        return value
    key = check_key(key) if key is not None else REF_PREFIX + hashlib.sha256(encoded).hexdigest()
    await raw.store(key, encoded, "application/json")
    return REF_SCHEME + key


async def resolve(raw: RawBackend, value_or_ref: Any) -> Any:
    """The value a reference points to, or ``value_or_ref`` itself when it is inline.

    Raises:
        RawNotFoundError: the reference names a key that holds nothing.
    """
    if not is_ref(value_or_ref):
        return value_or_ref
    data = await raw.retrieve(ref_key(value_or_ref))
    return _decoder.decode(data)
