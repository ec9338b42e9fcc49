"""Tamper evidence: each stored event's ``hash`` chains it to the previous event of its stream."""

from __future__ import annotations

import hashlib

import msgspec

from nexus.eventlog._port import GENESIS_HASH
from nexus.proto import CloudEvent, canonical_bytes


def event_hash(event: CloudEvent) -> str:
    """sha256 (hex) of the event's canonical encoding, ``hash`` left out, ``prevhash`` in."""
    return hashlib.sha256(canonical_bytes(event)).hexdigest()


def seal(event: CloudEvent, *, stream_id: str, version: int, position: int, prevhash: str) -> CloudEvent:
    """The event as stored: stream, version, position and the hash chain assigned."""
    placed = msgspec.structs.replace(
        event, streamid=stream_id, streamversion=version, position=position, prevhash=prevhash, hash=None
    )
    return msgspec.structs.replace(placed, hash=event_hash(placed))


def seal_encoded(
    event: CloudEvent, *, stream_id: str, version: int, position: int, prevhash: str
) -> tuple[CloudEvent, bytes]:
    """``seal``, plus the stored event's JSON, built from the bytes the hash was computed over.

    Adapters that store JSON use this to encode each event once: the canonical bytes are
    hashed, then ``hash`` is spliced in before the closing brace (JSON objects are unordered,
    so the result decodes to exactly the sealed event).
    """
    placed = msgspec.structs.replace(
        event, streamid=stream_id, streamversion=version, position=position, prevhash=prevhash, hash=None
    )
    canonical = canonical_bytes(placed)
    digest = hashlib.sha256(canonical).hexdigest()
    body = b'%b,"hash":"%b"}' % (canonical[:-1], digest.encode())
    return msgspec.structs.replace(placed, hash=digest), body


def same_content(stored: CloudEvent, new: CloudEvent) -> str | None:
    """None when ``new`` is a retry of ``stored``; otherwise which attribute differs."""
    for field in ("type", "source", "data", "subject", "datacontenttype", "time"):
        if getattr(stored, field) != getattr(new, field):
            return f"attribute {field!r} differs"
    return None


__all__ = ["GENESIS_HASH", "event_hash", "same_content", "seal", "seal_encoded"]
