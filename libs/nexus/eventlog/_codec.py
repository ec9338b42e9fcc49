"""Stored bodies to envelopes, shared by the adapters that keep each event's JSON as bytes."""

from __future__ import annotations

import gc
import threading
from collections.abc import Sequence

import msgspec

from nexus.eventlog._errors import EventLogUnavailableError
from nexus.proto import CloudEvent

_page_decoder = msgspec.json.Decoder(list[CloudEvent])
_gc_lock = threading.Lock()
_gc_paused = 0
_gc_was_enabled = False


def decode_page(payload: bytes) -> list[CloudEvent]:
    """Decode a JSON array of stored events in one call.

    One decoder call per page costs far less than one per event, and the cyclic garbage
    collector is paused meanwhile: a page allocates tens of thousands of containers that are
    all alive, and collections triggered by their count would traverse them again and again
    (it roughly halves replay time).

    Raises:
        EventLogUnavailableError: a stored body is not a valid event (the store is damaged).
    """
    global _gc_paused, _gc_was_enabled
    with _gc_lock:
        if _gc_paused == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_paused += 1
    try:
        return _page_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise EventLogUnavailableError(f"the event log holds a body that is not a valid event: {exc}") from None
    finally:
        with _gc_lock:
            _gc_paused -= 1
            if _gc_paused == 0 and _gc_was_enabled:
                gc.enable()


def decode_bodies(bodies: Sequence[bytes]) -> list[CloudEvent]:
    """Decode stored event bodies (joined into one JSON array, decoded by ``decode_page``)."""
    if not bodies:
        return []
    return decode_page(b"[" + b",".join(bodies) + b"]")
