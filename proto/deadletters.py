"""Dead letters on ``nexus.dlq.<consumer>`` (stream NEXUS_DLQ): their headers and the relay's placeholder.

A durable consumer that cannot handle a message (malformed, refused for good, out of
deliveries) publishes it on ``nexus.dlq.<its durable name>`` with the original headers plus
DEAD_LETTER_HEADERS; ``nexus dlq list`` shows them and ``nexus dlq redrive`` republishes the
payload to ``Nexus-Original-Subject`` without them. The relay, which publishes events rather
than consuming messages, dead-letters a placeholder naming an event it cannot publish.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "DEAD_LETTER_HEADERS",
    "EXT_HEADERS",
    "RELAY_CONSUMER",
    "RELAY_PLACEHOLDER_HEADERS",
    "TRUNCATED_HEADER",
    "RelayPlaceholder",
]

DEAD_LETTER_HEADERS: dict[str, str] = {
    "Nats-Msg-Id": "dlq:<consumer>:<stream>:<sequence>: one dead letter per original message and consumer.",
    "Nexus-Error": "Why it was dead-lettered, as a code (PoisonMessageError, EnvelopeError, MaxDeliveries…).",
    "Nexus-Error-Reason": "The reason in words (one line, at most 1,000 characters).",
    "Nexus-Consumer": "The durable consumer that gave up on it.",
    "Nexus-Deliveries": "How many times it was delivered.",
    "Nexus-Original-Subject": "Where it was published; `nexus dlq redrive` republishes it there.",
    "Nexus-Original-Stream": "The stream it was stored in.",
    "Nexus-Original-Seq": "Its sequence in that stream.",
    "Nexus-Original-Msg-Id": "Its own Nats-Msg-Id, when it had one.",
}
"""The headers the bus adds to a dead letter (``nexus.bus.DEAD_LETTER_HEADERS`` names the same
ones); the original message's other headers are kept beside them."""

TRUNCATED_HEADER = "Nexus-Payload-Truncated"
"""On a dead letter whose payload was cut to fit the server's max payload: the original size in bytes."""

RELAY_CONSUMER = "relay"
"""The relay's dead letters go to ``nexus.dlq.relay``."""

RELAY_PLACEHOLDER_HEADERS: dict[str, str] = {
    "Nexus-Error": "EventTooLarge, UndeliverableSubject or Undeliverable.",
    "Nexus-Error-Reason": "Why the event cannot be published.",
    "Nexus-Consumer": "Always `relay`.",
    "Nexus-Event-Id": "The event's id in the log.",
    "Nexus-Event-Stream": "Its stream.",
    "Nexus-Event-Position": "Its position in the log.",
    "Nexus-Event-Type": "Its type.",
    "Nexus-Event-Size": "Its encoded size in bytes.",
    TRUNCATED_HEADER: "Its encoded size: the event is not in the dead letter, so a redrive leaves it alone.",
    "Nexus-Original-Subject": "The subject it would have been published on, when it has a valid one.",
}
"""The headers of the relay's placeholder (Nats-Msg-Id ``dlq:relay:<event id>``)."""

EXT_HEADERS: dict[str, str] = {
    "Nats-Msg-Id": "Optional JetStream de-duplication id; the log also stores a (source, id) pair once.",
    "traceparent": "W3C trace context, continued by the ingest.",
}
"""The headers an external producer may send with an event on ``nexus.ext.<source>.<event>``."""


class RelayPlaceholder(msgspec.Struct, frozen=True, kw_only=True):
    """The relay's dead letter: names an event of the log it cannot publish (the event stays in the log)."""

    id: str
    streamid: str
    position: int | None
    type: str
    size: int
    """The event's encoded size in bytes."""
    error: str
    """EventTooLarge, UndeliverableSubject or Undeliverable."""
    reason: str
