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


class BusArgumentError(BusError, ValueError):
    """The caller passed what the bus refuses: an empty subject or one with whitespace, a header
    name that is not an HTTP token. Raised before anything is sent, identically by every adapter;
    retrying the same call can never succeed."""


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


class StoredMessage(msgspec.Struct, frozen=True):
    """A message as a stream holds it (looked up by sequence or subject, not delivered)."""

    stream: str
    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str]


class StreamState(msgspec.Struct, frozen=True):
    """A stream's configuration and what it holds now."""

    name: str
    subjects: tuple[str, ...]
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumer_count: int


class ConsumerState(msgspec.Struct, frozen=True):
    """A durable consumer's progress, as the server reports it."""

    stream: str
    name: str
    filter_subjects: tuple[str, ...]
    num_pending: int
    """Messages of the stream not yet delivered to it."""
    num_ack_pending: int
    """Messages delivered and not yet acknowledged."""
    num_redelivered: int
    ack_floor: int
    """Stream sequence up to which every message is acknowledged (0: none yet)."""


class KeyValueEntry(msgspec.Struct, frozen=True):
    key: str
    value: bytes
    revision: int


class KeyValueBucket(abc.ABC):
    """A key-value bucket (one value per key, revisions for compare-and-set, optional TTL)."""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValueEntry | None:
        """The key's current entry, or None when it has none (never set, purged or expired)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> int:
        """Set the value whatever it was; returns the new revision."""

    @abc.abstractmethod
    async def create(self, key: str, value: bytes) -> int | None:
        """Set the value only if the key has none; returns the revision, or None when it has one."""

    @abc.abstractmethod
    async def update(self, key: str, value: bytes, *, last: int) -> int | None:
        """Set the value only if its revision is still ``last``; returns the new one, or None."""

    @abc.abstractmethod
    async def purge(self, key: str) -> None:
        """Remove the key's value."""


class PendingAcks(abc.ABC):
    """The acks of messages already sent (``Bus.send_events``), not yet awaited."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def discard(self) -> None:
        """Stop waiting for these acks (the caller gave up on them, e.g. it lost its lease)."""

    @abc.abstractmethod
    async def acks(self) -> list[PublishAck]:
        """Wait for the acks, in order; raises as ``publish_events`` would."""


class _SettledAcks(PendingAcks):
    """Acks already at hand (an adapter that publishes synchronously)."""

    def __init__(self, acks: list[PublishAck]) -> None:
        self._acks = acks

    def __len__(self) -> int:
        return len(self._acks)

    def discard(self) -> None:
        self._acks = []

    async def acks(self) -> list[PublishAck]:
        return self._acks


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

    async def send_events(self, events: Sequence[CloudEvent]) -> PendingAcks:
        """Publish ``events`` now and return their pending acks, for callers that pipeline batches.

        The relay sends batch k+1 while the acks of batch k are on their way; ``acks()`` on the
        result waits for them (in order) and raises as ``publish_events`` would.
        """
        return _SettledAcks(await self.publish_events(events))

    @property
    @abc.abstractmethod
    def max_payload(self) -> int:
        """The largest message (headers and payload) the server accepts, in bytes."""

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

    # -- looking into streams (the relay, the DLQ and streams commands, resumption) ------------

    @abc.abstractmethod
    async def stream_state(self, stream: str) -> StreamState:
        """One stream's state; BusError when it does not exist."""

    @abc.abstractmethod
    async def streams(self) -> list[StreamState]:
        """Every stream's state."""

    @abc.abstractmethod
    async def consumers(self, stream: str) -> list[ConsumerState]:
        """The durable consumers of ``stream``."""

    @abc.abstractmethod
    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        """One durable consumer's state, or None when it does not exist."""

    @abc.abstractmethod
    async def get_message(self, stream: str, seq: int) -> StoredMessage | None:
        """The message at ``seq``, or None (never stored, deleted, or beyond the end)."""

    @abc.abstractmethod
    async def next_message(self, stream: str, seq: int, subject: str) -> StoredMessage | None:
        """The first message at ``seq`` or after on a subject matching ``subject``, or None."""

    @abc.abstractmethod
    async def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        """The last message on ``subject`` (a subject, not a wildcard), or None."""

    @abc.abstractmethod
    async def delete_message(self, stream: str, seq: int) -> bool:
        """Remove one message; False when there was none at ``seq``."""

    @abc.abstractmethod
    async def key_value(self, bucket: str, *, ttl: float | None = None) -> KeyValueBucket:
        """The bucket, created (one value per key, entries expiring after ``ttl`` s) if missing."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise BusUnavailableError when the server does not answer (used by /readyz)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
