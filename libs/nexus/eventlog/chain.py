"""Tamper evidence: each stored event's ``hash`` chains it to the previous event of its stream.

The definition, in two steps (hex digests are lower-case)::

    content = sha256(canonical JSON of the event with streamid, streamversion, position,
                     prevhash and hash left out)                      # sorted keys, compact
    hash    = sha256(JSON array [streamid, streamversion, position, prevhash, content])

"Canonical JSON" is ``nexus.proto.canonical_bytes`` (msgspec, keys sorted, no whitespace,
unset optional attributes omitted); the array is encoded the same way, e.g.
``["order-1",3,42,"9f2c…","5be0…"]``. So ``hash`` covers the event's content and its place:
its stream, its version, its global position and the hash of the event before it in the
stream (``GENESIS_HASH`` for the first). Changing a byte of the content, moving an event or
breaking the chain all change a recomputed hash.

Why two steps: the content digest does not depend on the event's place, so an adapter
computes it before the append is queued (outside the one writer's critical path); the writer
then hashes only the short placement array and splices the placement attributes into the
already encoded body (``seal_content``). ``event_hash`` recomputes the same value from a
stored event, which is what verification (``nexus.proof``) calls.
"""

from __future__ import annotations

import hashlib
from binascii import hexlify as _hexlify

import msgspec

from nexus.eventlog._port import GENESIS_HASH
from nexus.proto import CloudEvent, canonical_bytes

PLACEMENT = ("streamid", "streamversion", "position", "prevhash", "hash")
"""The attributes the log assigns; the content digest leaves them out."""

_json = msgspec.json.Encoder()
_sha256 = hashlib.sha256


def content_bytes(event: CloudEvent) -> bytes:
    """The canonical encoding of the event's content: placement attributes left out."""
    if (
        event.streamid is not None
        or event.streamversion is not None
        or event.position is not None
        or event.prevhash is not None
        or event.hash is not None
    ):
        event = msgspec.structs.replace(
            event, streamid=None, streamversion=None, position=None, prevhash=None, hash=None
        )
    return canonical_bytes(event)


def content_digest(event: CloudEvent) -> str:
    """sha256 (hex) of ``content_bytes(event)``."""
    return _sha256(content_bytes(event)).hexdigest()


def placement_hash(stream_id: str, version: int, position: int, prevhash: str, content: str) -> str:
    """sha256 (hex) of the placement array ``[stream_id, version, position, prevhash, content]``."""
    return _sha256(_json.encode([stream_id, version, position, prevhash, content])).hexdigest()


def event_hash(event: CloudEvent) -> str:
    """The ``hash`` a stored event should carry, recomputed from its content and placement.

    An event that is not stored (placement attributes unset) hashes with ``null`` in their
    place, which no stored event's hash matches.
    """
    content = content_digest(event)
    return _sha256(
        _json.encode([event.streamid, event.streamversion, event.position, event.prevhash, content])
    ).hexdigest()


def seal(
    event: CloudEvent, *, stream_id: str, version: int, position: int, prevhash: str, content: str | None = None
) -> CloudEvent:
    """The event as stored: stream, version, position and the hash chain assigned.

    ``content`` is ``content_digest(event)`` when the caller computed it already.
    """
    if content is None:
        content = content_digest(event)
    digest = placement_hash(stream_id, version, position, prevhash, content)
    return msgspec.structs.replace(
        event, streamid=stream_id, streamversion=version, position=position, prevhash=prevhash, hash=digest
    )


def seal_content(
    content: bytes, digest: bytes, *, stream_key: bytes, version: int, position: int, prevhash: bytes
) -> tuple[bytes, bytes]:
    """The stored event's ``hash`` and JSON body, from its already encoded content.

    This is the part of sealing that depends on the event's place, run by an adapter's
    writer; digests are passed as hex ``bytes`` (``hex_digest``) so nothing is converted
    between ``str`` and ``bytes`` per event.

    Args:
        content: ``content_bytes(event)``.
        digest: ``hex_digest(content)``.
        stream_key: the stream id encoded as a JSON string (``msgspec.json.encode(stream_id)``),
            encoded once per append.
        prevhash: the previous event's hash (hex, as bytes).

    The placement array is formatted directly (the same bytes msgspec writes: the stream id
    is already JSON, integers are decimal, hex digests need no escaping), and the placement
    attributes are spliced in before the content's closing brace: JSON objects are
    unordered, so the body decodes to exactly the sealed event.
    """
    hash_ = _hexlify(_sha256(b'[%b,%d,%d,"%b","%b"]' % (stream_key, version, position, prevhash, digest)).digest())
    body = b'%b,"hash":"%b","position":%d,"prevhash":"%b","streamid":%b,"streamversion":%d}' % (
        content[:-1],
        hash_,
        position,
        prevhash,
        stream_key,
        version,
    )
    return hash_, body


def hex_digest(data: bytes) -> bytes:
    """sha256 of ``data`` as lower-case hex ``bytes``."""
    return _hexlify(_sha256(data).digest())


def seal_encoded(
    event: CloudEvent,
    *,
    stream_id: str,
    version: int,
    position: int,
    prevhash: str,
    content: tuple[bytes, bytes] | None = None,
) -> tuple[CloudEvent, bytes]:
    """``seal``, plus the stored event's JSON body (see ``seal_content``).

    ``content`` is ``(content_bytes(event), hex_digest(…))`` when the caller computed them already.
    """
    encoded, digest = (content_bytes(event), None) if content is None else content
    hash_, body = seal_content(
        encoded,
        hex_digest(encoded) if digest is None else digest,
        stream_key=_json.encode(stream_id),
        version=version,
        position=position,
        prevhash=prevhash.encode(),
    )
    sealed = msgspec.structs.replace(
        event, streamid=stream_id, streamversion=version, position=position, prevhash=prevhash, hash=hash_.decode()
    )
    return sealed, body


def same_content(stored: CloudEvent, new: CloudEvent) -> str | None:
    """None when ``new`` is a retry of ``stored``; otherwise which attribute differs."""
    for field in ("type", "source", "data", "subject", "datacontenttype", "time"):
        if getattr(stored, field) != getattr(new, field):
            return f"attribute {field!r} differs"
    return None


__all__ = [
    "GENESIS_HASH",
    "PLACEMENT",
    "content_bytes",
    "content_digest",
    "event_hash",
    "hex_digest",
    "placement_hash",
    "same_content",
    "seal",
    "seal_content",
    "seal_encoded",
]
