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
    "CONSUMER_HEADER",
    "DEAD_LETTER_HEADERS",
    "DELIVERIES_HEADER",
    "ERROR_HEADER",
    "EVENT_ID_HEADER",
    "EVENT_POSITION_HEADER",
    "EVENT_SIZE_HEADER",
    "EVENT_STREAM_HEADER",
    "EVENT_TYPE_HEADER",
    "EXT_HEADERS",
    "MSG_ID_HEADER",
    "ORIGINAL_MSG_ID_HEADER",
    "ORIGINAL_SEQ_HEADER",
    "ORIGINAL_STREAM_HEADER",
    "ORIGINAL_SUBJECT_HEADER",
    "REASON_HEADER",
    "RELAY_CONSUMER",
    "RELAY_PLACEHOLDER_HEADERS",
    "TRUNCATED_HEADER",
    "RelayPlaceholder",
]

# The header names, defined here once: the bus and the relay write them, the command line reads
# them, and the AsyncAPI document describes them from the tables below.
MSG_ID_HEADER = "Nats-Msg-Id"
ERROR_HEADER = "Nexus-Error"
REASON_HEADER = "Nexus-Error-Reason"
CONSUMER_HEADER = "Nexus-Consumer"
DELIVERIES_HEADER = "Nexus-Deliveries"
ORIGINAL_SUBJECT_HEADER = "Nexus-Original-Subject"
ORIGINAL_STREAM_HEADER = "Nexus-Original-Stream"
ORIGINAL_SEQ_HEADER = "Nexus-Original-Seq"
ORIGINAL_MSG_ID_HEADER = "Nexus-Original-Msg-Id"
EVENT_ID_HEADER = "Nexus-Event-Id"
EVENT_STREAM_HEADER = "Nexus-Event-Stream"
EVENT_POSITION_HEADER = "Nexus-Event-Position"
EVENT_TYPE_HEADER = "Nexus-Event-Type"
EVENT_SIZE_HEADER = "Nexus-Event-Size"

DEAD_LETTER_HEADERS: dict[str, str] = {
    MSG_ID_HEADER: "dlq:<consumer>:<stream>:<sequence>: one dead letter per original message and consumer.",
    ERROR_HEADER: "Why it was dead-lettered, as a code (PoisonMessageError, EnvelopeError, MaxDeliveries…).",
    REASON_HEADER: "The reason in words (one line, at most 1,000 characters).",
    CONSUMER_HEADER: "The durable consumer that gave up on it.",
    DELIVERIES_HEADER: "How many times it was delivered.",
    ORIGINAL_SUBJECT_HEADER: "Where it was published; `nexus dlq redrive` republishes it there.",
    ORIGINAL_STREAM_HEADER: "The stream it was stored in.",
    ORIGINAL_SEQ_HEADER: "Its sequence in that stream.",
    ORIGINAL_MSG_ID_HEADER: "Its own Nats-Msg-Id, when it had one.",
}
"""The headers the bus adds to a dead letter, in the order it keeps them when one must be cut
(``nexus.bus.DEAD_LETTER_HEADERS`` is this table's names); the original message's other headers
are kept beside them."""

TRUNCATED_HEADER = "Nexus-Payload-Truncated"
"""On a dead letter whose payload was cut to fit the server's max payload: the original size in bytes."""

RELAY_CONSUMER = "relay"
"""The relay's dead letters go to ``nexus.dlq.relay``."""

RELAY_PLACEHOLDER_HEADERS: dict[str, str] = {
    ERROR_HEADER: "EventTooLarge, UndeliverableSubject or Undeliverable.",
    REASON_HEADER: "Why the event cannot be published.",
    CONSUMER_HEADER: "Always `relay`.",
    EVENT_ID_HEADER: "The event's id in the log.",
    EVENT_STREAM_HEADER: "Its stream.",
    EVENT_POSITION_HEADER: "Its position in the log.",
    EVENT_TYPE_HEADER: "Its type.",
    EVENT_SIZE_HEADER: "Its encoded size in bytes.",
    TRUNCATED_HEADER: "Its encoded size: the event is not in the dead letter, so a redrive leaves it alone.",
    ORIGINAL_SUBJECT_HEADER: "The subject it would have been published on, when it has a valid one.",
}
"""The headers of the relay's placeholder (Nats-Msg-Id ``dlq:relay:<event id>``)."""

EXT_HEADERS: dict[str, str] = {
    MSG_ID_HEADER: "Optional JetStream de-duplication id; the log also stores a (source, id) pair once.",
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
