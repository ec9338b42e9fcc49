"""Idempotent, gap-free consumption of platform events (``nexus.evt.>``).

JetStream may deliver an event twice (redelivery, a re-publishing relay) and may miss one (a
tail lost in an OS crash, a deleted message). An ``EventConsumer`` keeps the last applied
version of every log stream it has seen: a version at or below it is skipped, and a version
beyond the next one means events are missing, which it reads from the log and applies first.
So ``apply`` sees each event of a stream once, in version order.

Usage in a service::

    consumer = EventConsumer(bus, log, ConsumerSpec("atlas-views", STREAM_EVT, ("nexus.evt.>",)), apply,
                             checkpoint=store)  # optional: persist versions with your state
    await consumer.start()
    ...
    await consumer.stop()

The versions live in the consumer, so every replica that keeps its own view must use its own
durable name (JetStream would otherwise split the stream between replicas and each would fill
the other's share from the log).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping

from nexus.bus._metrics import EVENT_DUPLICATES, EVENT_GAPS_FILLED
from nexus.bus._port import Bus, Consumer, ConsumerSpec, Delivery, PoisonMessageError
from nexus.bus._subjects import matches_any
from nexus.eventlog import EventLog
from nexus.proto import CATALOG, CloudEvent, decode_event, subject_for

__all__ = ["CheckpointStore", "EventConsumer", "MemoryCheckpointStore", "decode_delivery"]

Apply = Callable[[CloudEvent], Awaitable[None]]


def decode_delivery(delivery: Delivery) -> CloudEvent:
    """The delivery's CloudEvent, with its data checked against the catalogue.

    Raises:
        EnvelopeError: not a valid CloudEvent, or data that fails its type's schema (the bus
            dead-letters the message with this reason).
    """
    event = decode_event(delivery.data)
    CATALOG.validate(event)
    return event


class CheckpointStore(abc.ABC):
    """Where an event consumer keeps the last applied version of each stream."""

    @abc.abstractmethod
    async def load(self) -> dict[str, int]:
        """Every stream's last applied version, as last saved."""

    @abc.abstractmethod
    async def save(self, versions: Mapping[str, int]) -> None:
        """Record the versions of the streams that changed since the last save."""


class MemoryCheckpointStore(CheckpointStore):
    """Versions in a dict: for tests, and for views rebuilt from the log at every start."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.saves = 0

    async def load(self) -> dict[str, int]:
        return dict(self.versions)

    async def save(self, versions: Mapping[str, int]) -> None:
        self.versions.update(versions)
        self.saves += 1


class EventConsumer:
    """A durable consumer of platform events that applies each event of a stream exactly once, in order.

    Args:
        bus: the bus.
        log: the event log, read to fill gaps.
        spec: the durable consumer (its filter decides which events ``apply`` sees, also
            among those read from the log).
        apply: called once per event, in stream-version order.
        checkpoint: where versions are persisted; saved (once per batch) before the batch is
            acknowledged. None keeps them in memory only.
    """

    def __init__(
        self,
        bus: Bus,
        log: EventLog,
        spec: ConsumerSpec,
        apply: Apply,
        *,
        checkpoint: CheckpointStore | None = None,
    ) -> None:
        self.bus = bus
        self.log = log
        self.spec = spec
        self._apply = apply
        self._checkpoint = checkpoint
        self._versions: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._consumer: Consumer | None = None

    @property
    def versions(self) -> Mapping[str, int]:
        """The last applied version of each stream seen so far."""
        return self._versions

    async def start(self) -> None:
        if self._checkpoint is not None:
            self._versions = await self._checkpoint.load()
        flush = self._flush if self._checkpoint is not None else None
        self._consumer = await self.bus.consume(self.spec, self._handle, flush=flush)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _handle(self, delivery: Delivery) -> None:
        event = decode_delivery(delivery)
        stream, version = event.streamid, event.streamversion
        if not stream or not version:
            raise PoisonMessageError("event has no streamid/streamversion: only events stored in the log are consumed")
        last = self._versions.get(stream, 0)
        if version <= last:
            EVENT_DUPLICATES.labels(self.spec.name).inc()
            return
        if version > last + 1:
            await self._fill_gap(stream, last, version)
        await self._apply(event)
        self._advance(stream, version)

    async def _fill_gap(self, stream: str, last: int, version: int) -> None:
        missing = await self.log.read_stream(stream, last + 1, limit=version - 1 - last)
        for event in missing:
            if matches_any(self.spec.filter_subjects, subject_for(event)):
                await self._apply(event)
                EVENT_GAPS_FILLED.labels(self.spec.name).inc()
            # Events outside the filter still advance the version: they belong to the stream.
            self._advance(stream, event.streamversion or last)

    def _advance(self, stream: str, version: int) -> None:
        self._versions[stream] = version
        self._dirty.add(stream)

    async def _flush(self) -> None:
        if not self._dirty or self._checkpoint is None:
            return
        changed = {stream: self._versions[stream] for stream in self._dirty}
        await self._checkpoint.save(changed)
        self._dirty.clear()
