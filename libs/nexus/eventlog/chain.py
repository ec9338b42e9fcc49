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


def same_content(stored: CloudEvent, new: CloudEvent) -> str | None:
    """None when ``new`` is a retry of ``stored``; otherwise which attribute differs."""
    for field in ("type", "source", "data", "subject", "datacontenttype", "time"):
        if getattr(stored, field) != getattr(new, field):
            return f"attribute {field!r} differs"
    return None


__all__ = ["GENESIS_HASH", "event_hash", "same_content", "seal"]
