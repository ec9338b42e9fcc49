"""Platform events as a bus consumer sees them: ``decode_delivery``.

A handler of a durable consumer that reads CloudEvents (the ingest of external events, the
command router) turns each delivery into its event with ``decode_delivery``; an invalid
envelope or data that fails its type's schema raises ``EnvelopeError``, which the bus treats
as poison and dead-letters.

Services do not fold platform events from the bus: they read the log's own subscription
through ``nexus.replay.tail`` (events in position order, each once, nothing to de-duplicate or
fill), so the bus offers no second, gap-filling way to read ``nexus.evt.>``.
"""

from __future__ import annotations

from nexus.bus._port import Delivery
from nexus.proto import CATALOG, CloudEvent, decode_event

__all__ = ["decode_delivery"]


def decode_delivery(delivery: Delivery) -> CloudEvent:
    """The delivery's CloudEvent, with its data checked against the catalogue.

    Raises:
        EnvelopeError: not a valid CloudEvent, or data that fails its type's schema (the bus
            dead-letters the message with this reason).
    """
    event = decode_event(delivery.data)
    CATALOG.validate(event)
    return event
