"""The bus port: publish, request/reply and durable consumers, over JetStream or in memory."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from nexus.proto import CloudEvent


class BusError(Exception):
    """Base of every error the bus raises; callers never see nats-py's exceptions."""


class BusUnavailableError(BusError):
    """The NATS server cannot be reached or did not answer in time."""


class BusTimeoutError(BusUnavailableError):
    """A publish acknowledgement or a command's reply did not arrive in time."""


class StreamConfigError(BusError):
    """A Nexus stream exists with settings that cannot be updated in place; the message says what to do."""


class RetryableError(Exception):
    """Raised by a handler: the message could not be processed now; redeliver it later (nak with back-off)."""


class PoisonMessageError(Exception):
    """Raised by a handler: the message can never be processed; dead-letter it at once (term)."""


class PublishAck(msgspec.Struct, frozen=True):
    """JetStream's acknowledgement of a publish."""

    stream: str
    seq: int
    duplicate: bool = False
    """True when JetStream recognised the ``Nats-Msg-Id`` and stored nothing new."""


@dataclass(frozen=True)
class OutboundMessage:
    """One message for ``Bus.publish_many``."""

    subject: str
    payload: bytes
    msg_id: str | None = None
    headers: Mapping[str, str] | None = None


class Delivery(msgspec.Struct, frozen=True):
    """One message as a consumer's handler sees it."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    num_delivered: int = 1
    """How many times it has been delivered, this time included."""
    stream_seq: int = 0
    reply: str | None = None
    """Where to send a result, for request/reply commands."""


Handler = Callable[[Delivery], Awaitable[bytes | None]]
"""A consumer's handler. Returning normally acks (and its bytes, if any, answer ``reply``);
raising RetryableError naks with back-off; raising PoisonMessageError, EnvelopeError or
msgspec errors dead-letters at once; any other exception is retried until ``max_deliver``,
then dead-lettered."""


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer."""

    name: str
    """Durable name, shared by every replica of the service (they split the messages)."""
    stream: str
    """JetStream stream, e.g. NEXUS_EVT."""
    filter_subjects: tuple[str, ...]
    """Subjects it receives, e.g. ("nexus.evt.workflow.>",)."""
    max_deliver: int = 5
    ack_wait_seconds: float = 30.0
    backoff_seconds: tuple[float, ...] = (0.5, 2.0, 10.0)
    batch: int = 256
    """How many messages one fetch asks for."""
    max_ack_pending: int = 1024
    deliver_from_seq: int | None = None
    """Start at this stream sequence when the consumer is first created (default: all)."""
    extra: Mapping[str, object] = field(default_factory=dict)


class Consumer(abc.ABC):
    """A running consumer; ``stop()`` stops fetching, finishes in-flight work, acks, returns."""

    spec: ConsumerSpec

    @abc.abstractmethod
    async def stop(self) -> None: ...


class Bus(abc.ABC):
    """Publish events and commands, and run durable consumers."""

    @abc.abstractmethod
    async def ensure_streams(self) -> None:
        """Create or update NEXUS_EVT, NEXUS_CMD, NEXUS_EXT, NEXUS_DLQ (idempotent)."""

    @abc.abstractmethod
    async def publish(
        self, subject: str, payload: bytes, *, msg_id: str | None = None, headers: Mapping[str, str] | None = None
    ) -> PublishAck:
        """Publish to a stream subject and wait for the ack; ``msg_id`` de-duplicates."""

    @abc.abstractmethod
    async def publish_event(self, event: CloudEvent) -> PublishAck:
        """Publish a stored event on ``subject_for(event)`` with ``Nats-Msg-Id`` = event id and its traceparent."""

    async def publish_many(self, messages: Sequence[OutboundMessage]) -> list[PublishAck]:
        """Publish several messages, pipelined where the adapter can, and wait for every ack (in order)."""
        return [await self.publish(m.subject, m.payload, msg_id=m.msg_id, headers=m.headers) for m in messages]

    async def publish_events(self, events: Sequence[CloudEvent]) -> list[PublishAck]:
        """``publish_event`` for several events, pipelined where the adapter can; acks in order."""
        return [await self.publish_event(event) for event in events]

    @abc.abstractmethod
    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline per call, part of the API
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Send a command and wait for the handler's reply."""

    @abc.abstractmethod
    async def consume(
        self, spec: ConsumerSpec, handler: Handler, *, flush: Callable[[], Awaitable[None]] | None = None
    ) -> Consumer:
        """Start a durable consumer running ``handler`` for each message.

        Args:
            spec: the durable consumer.
            handler: called once per delivery (see ``Handler``).
            flush: when given, acks are held back until ``flush()`` returns; it runs whenever the
                consumer has no more messages at hand, or after ``spec.batch`` of them. Owners
                persist their state there, so one write covers a batch and a crash before it
                means the batch is delivered again rather than lost.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise BusUnavailableError when the server does not answer (used by /readyz)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
