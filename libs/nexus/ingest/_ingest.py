"""External events in: ``nexus.ext.<source>.<event>`` → the log, stream ``ext-<source>``.

Each source may be bound to a tenant (``nexus.platform.producer.registered`` in stream
``producers``, written by ``nexus keys create --producer SOURCE --client NAME``). The producer's
NATS credential can publish only on its own source's subjects, so the binding, not anything the
producer writes, decides whose events they are: the ingest sets the ``tenant`` extension from it
and drops a ``tenant`` the producer claimed.
"""

from __future__ import annotations

import uuid

import msgspec

from nexus.bus._metrics import INGESTED
from nexus.bus._port import Bus, Consumer, ConsumerSpec, Delivery, PoisonMessageError
from nexus.bus.events import decode_delivery
from nexus.eventlog import ANY, DuplicateEventError, EventLog, EventTooLargeError
from nexus.proto import EXT_PREFIX, STREAM_EXT, CloudEvent, ext_stream_id, new_event
from nexus.proto.events.platform import ProducerRegistered

__all__ = ["PRODUCERS_STREAM", "PRODUCER_REGISTERED", "ExtIngest", "SourceTenants", "ingested_id", "register_producer"]

PRODUCERS_STREAM = "producers"
PRODUCER_REGISTERED = "nexus.platform.producer.registered"

_NAMESPACE = uuid.UUID("6b1f3c4e-2a51-4c1e-9a43-0e5f5d2b7a10")


def ingested_id(source: str, event_id: str) -> str:
    """The log id of an external event: one per CloudEvents ``source`` + ``id``, whatever the producer.

    External ids are unique only within their source; the log needs them unique everywhere,
    so the stored id is derived from both (UUIDv5) and the original id is kept as ``causationid``.
    """
    return str(uuid.uuid5(_NAMESPACE, f"{source}\n{event_id}"))


async def register_producer(log: EventLog, source: str, tenant: str | None) -> CloudEvent:
    """Bind ``source`` to ``tenant`` (None: the platform): its events are stamped with it from now on."""
    data = ProducerRegistered(source=source, tenant=tenant)
    [stored] = await log.append(
        PRODUCERS_STREAM, [new_event(PRODUCER_REGISTERED, data, source="nexus/platform", subject=source)]
    )
    return stored


class SourceTenants:
    """Which tenant each external source belongs to, folded from stream ``producers``."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._tenants: dict[str, str | None] = {}
        self._version = 0

    async def tenant_of(self, source: str) -> str | None:
        """The tenant of ``source`` (the latest binding), or None: the platform's."""
        for event in await self._log.read_stream(PRODUCERS_STREAM, self._version + 1):
            if event.type == PRODUCER_REGISTERED:
                binding = msgspec.convert(event.data, ProducerRegistered)
                self._tenants[binding.source] = binding.tenant
            self._version = max(self._version, event.streamversion or 0)
        return self._tenants.get(source)


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
        self.sources = SourceTenants(log)

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
            # Whose event it is follows from the source's binding, never from the producer.
            tenant=await self.sources.tenant_of(source_token),
            # The log records the ingest's own trace (its append span, child of the consume span
            # that continued the producer's ``traceparent`` header), so a trigger the event fires
            # and every consumer of it join one trace with its ingest.
            traceparent=None,
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
        except EventTooLargeError as exc:
            # It will never fit: dead-letter it now instead of retrying it max_deliver times.
            INGESTED.labels("dead_letter").inc()
            raise PoisonMessageError(str(exc)) from None
        INGESTED.labels("ingested").inc()
