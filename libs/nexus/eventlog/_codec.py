"""Stored bodies to envelopes, shared by the adapters that keep each event's JSON as bytes."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from nexus.eventlog._errors import EventLogUnavailableError
from nexus.proto import CloudEvent

_page_decoder = msgspec.json.Decoder(list[CloudEvent])


def decode_bodies(bodies: Sequence[bytes]) -> list[CloudEvent]:
    """Decode stored event bodies in one call (they are joined into one JSON array).

    One decoder call per page costs far less than one per event: replay speed is bounded by it.

    Raises:
        EventLogUnavailableError: a stored body is not a valid event (the store is damaged).
    """
    if not bodies:
        return []
    try:
        return _page_decoder.decode(b"[" + b",".join(bodies) + b"]")
    except msgspec.DecodeError as exc:
        raise EventLogUnavailableError(f"the event log holds a body that is not a valid event: {exc}") from None
