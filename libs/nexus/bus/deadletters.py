"""Dead letters (stream NEXUS_DLQ): reading them, and sending them back to their original subject.

One implementation for every caller: ``nexus dlq list|redrive`` (the operator, over NATS) and
KAM's admin routes behind the console's dead-letter page (KAM's own NATS identity). A dead
letter is what a durable consumer gave up on (``nexus.bus._dispatch.dead_letter_headers``),
or the relay's placeholder for an event it cannot publish; its headers say which consumer,
why, and where the message was first published (``nexus.proto.deadletters``).

A redrive republishes the payload to ``Nexus-Original-Subject`` with the original headers (the
dead-letter headers left out) and then deletes the dead letter. It is refused, and the dead
letter kept, when the payload was cut to fit the DLQ (republishing the cut payload would be a
new, wrong message), when the original subject is unknown, or when the caller's identity may
not publish there (``may_publish``: KAM may republish commands but not platform events, which
only the relay publishes; the operator redrives those from the command line).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import msgspec

from nexus.bus._dispatch import DEAD_LETTER_HEADERS, TRUNCATED_HEADER
from nexus.bus._port import Bus, StoredMessage
from nexus.proto import DLQ_PREFIX, STREAM_DLQ, dlq_subject
from nexus.proto.deadletters import (
    CONSUMER_HEADER,
    DELIVERIES_HEADER,
    ERROR_HEADER,
    ORIGINAL_MSG_ID_HEADER,
    ORIGINAL_SEQ_HEADER,
    ORIGINAL_STREAM_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    REASON_HEADER,
)

__all__ = [
    "DeadLetter",
    "Redriven",
    "dead_letters",
    "describe",
    "find",
    "not_redrivable",
    "redrive",
    "redrive_one",
]

PublishCheck = Callable[[str], bool]
"""Whether the caller's identity may publish on a subject (None: no check, the server decides)."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A dead letter as people read it: who gave up on what, why, and whether it can be redriven."""

    seq: int
    """Its sequence in NEXUS_DLQ (what a redrive of one names)."""
    consumer: str
    """The durable consumer that gave up on it (``relay`` for the relay's placeholders)."""
    original_subject: str | None
    original_stream: str | None
    original_seq: int | None
    original_msg_id: str | None
    deliveries: int | None
    """How many times the consumer received it."""
    error: str
    """The reason as a code (PoisonMessageError, EnvelopeError, MaxDeliveries…)."""
    reason: str
    """The reason in words."""
    size: int
    """The payload's size in bytes (as kept in the DLQ)."""
    redrivable: bool
    not_redrivable_because: str | None = None
    """Why a redrive would leave it in place, when it would."""


class Redriven(NamedTuple):
    """What a redrive did: how many went back, and a line per dead letter left in place."""

    sent: int
    """Dead letters republished and deleted from NEXUS_DLQ."""
    problems: list[str]


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def not_redrivable(message: StoredMessage, may_publish: PublishCheck | None = None) -> str | None:
    """Why ``message`` cannot be redriven (by a caller whose identity ``may_publish``), or None."""
    headers = message.headers
    original = headers.get(ORIGINAL_SUBJECT_HEADER)
    if not original:
        return f"no {ORIGINAL_SUBJECT_HEADER} header: nowhere to send it"
    if TRUNCATED_HEADER in headers:
        return (
            f"the payload was cut from {headers[TRUNCATED_HEADER]} bytes when it was dead-lettered "
            "(republishing it would send a different message)"
        )
    if may_publish is not None and not may_publish(original):
        consumer = headers.get(CONSUMER_HEADER) or message.subject.removeprefix(f"{DLQ_PREFIX}.")
        return (
            f"this identity may not publish on {original} (only the relay publishes platform events); "
            f"the operator redrives it with `nexus dlq redrive --consumer {consumer}`"
        )
    return None


def describe(message: StoredMessage, may_publish: PublishCheck | None = None) -> DeadLetter:
    """The dead letter ``message`` as the listing shows it."""
    headers = message.headers
    why = not_redrivable(message, may_publish)
    return DeadLetter(
        seq=message.seq,
        consumer=headers.get(CONSUMER_HEADER) or message.subject.removeprefix(f"{DLQ_PREFIX}."),
        original_subject=headers.get(ORIGINAL_SUBJECT_HEADER),
        original_stream=headers.get(ORIGINAL_STREAM_HEADER),
        original_seq=_number(headers.get(ORIGINAL_SEQ_HEADER)),
        original_msg_id=headers.get(ORIGINAL_MSG_ID_HEADER),
        deliveries=_number(headers.get(DELIVERIES_HEADER)),
        error=headers.get(ERROR_HEADER, ""),
        reason=headers.get(REASON_HEADER, ""),
        size=len(message.data),
        redrivable=why is None,
        not_redrivable_because=why,
    )


async def dead_letters(bus: Bus, consumer: str | None = None) -> AsyncIterator[StoredMessage]:
    """Every message in NEXUS_DLQ (of one consumer's subject when given), in stream order."""
    subject = dlq_subject(consumer) if consumer else f"{DLQ_PREFIX}.>"
    seq = 1
    while True:
        message = await bus.next_message(STREAM_DLQ, seq, subject)
        if message is None:
            return
        yield message
        seq = message.seq + 1


async def find(bus: Bus, seq: int) -> StoredMessage | None:
    """The dead letter at sequence ``seq`` of NEXUS_DLQ, or None (never was, or redriven since)."""
    message = await bus.next_message(STREAM_DLQ, seq, f"{DLQ_PREFIX}.>")
    return message if message is not None and message.seq == seq else None


async def _send_back(bus: Bus, message: StoredMessage) -> None:
    headers = dict(message.headers)
    outgoing = {k: v for k, v in headers.items() if k not in DEAD_LETTER_HEADERS}
    # A fresh id per dead letter: redriving again after an interruption is de-duplicated,
    # while the original id (still inside JetStream's window) would be dropped as a duplicate.
    await bus.publish(headers[ORIGINAL_SUBJECT_HEADER], message.data, msg_id=f"redrive:{message.seq}", headers=outgoing)
    await bus.delete_message(STREAM_DLQ, message.seq)


async def redrive_one(bus: Bus, message: StoredMessage, may_publish: PublishCheck | None = None) -> str | None:
    """Redrive one dead letter; None when done, else why it stays in NEXUS_DLQ."""
    why = not_redrivable(message, may_publish)
    if why is not None:
        return why
    await _send_back(bus, message)
    return None


async def redrive(bus: Bus, consumer: str | None = None, *, may_publish: PublishCheck | None = None) -> Redriven:
    """Republish dead letters (one consumer's when given) to their original subject, then delete them.

    Returns:
        How many were redriven, and a line per message that could not be (kept in the DLQ).
    """
    count = 0
    problems: list[str] = []
    async for message in dead_letters(bus, consumer):
        why = await redrive_one(bus, message, may_publish)
        if why is None:
            count += 1
        else:
            problems.append(f"seq {message.seq}: {why}; left in {STREAM_DLQ}")
    return Redriven(count, problems)
