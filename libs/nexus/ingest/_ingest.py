"""External events in: ``nexus.ext.<source>.<event>`` → the log, stream ``ext-<source>``."""

from __future__ import annotations

import uuid

import msgspec

from nexus.bus._metrics import INGESTED
from nexus.bus._port import Bus, Consumer, ConsumerSpec, Delivery, PoisonMessageError
from nexus.bus.events import decode_delivery
from nexus.eventlog import ANY, DuplicateEventError, EventLog
from nexus.proto import EXT_PREFIX, STREAM_EXT, ext_stream_id

__all__ = ["ExtIngest", "ingested_id"]

_NAMESPACE = uuid.UUID("6b1f3c4e-2a51-4c1e-9a43-0e5f5d2b7a10")


def ingested_id(source: str, event_id: str) -> str:
    """The log id of an external event: one per CloudEvents ``source`` + ``id``, whatever the producer.

    External ids are unique only within their source; the log needs them unique everywhere,
    so the stored id is derived from both (UUIDv5) and the original id is kept as ``causationid``.
    """
    return str(uuid.uuid5(_NAMESPACE, f"{source}\n{event_id}"))


class ExtIngest:
    """The durable consumer of NEXUS_EXT that appends external CloudEvents to the log.

    The envelope is validated (and the data, when the type is in the catalogue); a message
    that fails is dead-lettered on ``nexus.dlq.<name>`` with the reason. Re-sent events (same
    ``source`` and ``id``) are stored once. Messages published while Nexus was down wait in
    NEXUS_EXT and are ingested when it comes back.
    """

    def __init__(self, bus: Bus, log: EventLog, *, name: str = "nexus-ingest") -> None:
        self.bus = bus
        self.log = log
        self.spec = ConsumerSpec(name=name, stream=STREAM_EXT, filter_subjects=(f"{EXT_PREFIX}.>",))
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        self._consumer = await self.bus.consume(self.spec, self.handle)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def handle(self, delivery: Delivery) -> None:
        tokens = delivery.subject.split(".")
        if len(tokens) != 4:
            INGESTED.labels("dead_letter").inc()
            raise PoisonMessageError(f"subject {delivery.subject!r} is not nexus.ext.<source>.<event>")
        source_token, event_token = tokens[2], tokens[3]
        try:
            event = decode_delivery(delivery)
        except Exception:
            INGESTED.labels("dead_letter").inc()
            raise
        stored = msgspec.structs.replace(
            event,
            id=ingested_id(event.source, event.id),
            causationid=event.id,
            extevent=event_token,
            # Log-assigned attributes a producer may have sent are the log's to set.
            streamid=None,
            streamversion=None,
            position=None,
            prevhash=None,
            hash=None,
        )
        try:
            await self.log.append(ext_stream_id(source_token), [stored], ANY)
        except DuplicateEventError:
            # Same source and id with other content: the first one stands.
            INGESTED.labels("duplicate").inc()
            return
        INGESTED.labels("ingested").inc()
