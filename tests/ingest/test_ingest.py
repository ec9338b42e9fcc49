"""External events into the log, commands, and a flood of malformed messages."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import msgspec
import pytest

from nexus.bus import ConsumerSpec, Delivery
from nexus.bus.events import decode_delivery
from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import CommandRouter, ExtIngest, ingested_id
from nexus.proto import CATALOG, STREAM_DLQ, STREAM_EVT, CloudEvent, encode_event, new_event
from nexus.relay import Relay

pytestmark = pytest.mark.nats

WAIT = 20.0


@pytest.fixture
async def bus(nats_server: str) -> AsyncIterator[JetStreamBus]:
    bus = await JetStreamBus.connect(nats_server)
    yield bus
    await bus.close()


def external(n: int, source: str = "https://crm.example/") -> bytes:
    return encode_event(new_event("com.example.crm.contact.created", {"n": n}, source=source, id=f"contact-{n}"))


async def wait_for_head(log: MemoryEventLog, position: int) -> None:
    async def reach() -> None:
        async for event in log.subscribe(position):
            if event.position == position:
                return

    await asyncio.wait_for(reach(), WAIT)


async def test_external_events_are_ingested_once_and_relayed(bus: JetStreamBus, memory_log: MemoryEventLog) -> None:
    relayed: asyncio.Queue[Delivery] = asyncio.Queue()

    async def collect(delivery: Delivery) -> None:
        await relayed.put(delivery)

    await bus.consume(ConsumerSpec("ext-watch", STREAM_EVT, ("nexus.evt.ext.>",)), collect)
    ingest = ExtIngest(bus, memory_log)
    await ingest.start()
    relay = Relay(memory_log, bus, lease=False)
    await relay.start()
    await bus.publish("nexus.ext.crm.contact_created", external(1))
    # The producer sends it again (a retry after a timeout): still one event in the log.
    await bus.publish("nexus.ext.crm.contact_created", external(1))
    delivery = await asyncio.wait_for(relayed.get(), WAIT)
    assert delivery.subject == "nexus.evt.ext.crm.contact_created"
    (stored,) = await memory_log.read_stream("ext-crm")
    assert stored.extevent == "contact_created"
    assert stored.id == ingested_id("https://crm.example/", "contact-1")
    assert stored.causationid == "contact-1"
    await bus.publish("nexus.ext.crm.contact_created", external(2))
    await asyncio.wait_for(relayed.get(), WAIT)
    assert [e.data["n"] for e in await memory_log.read_stream("ext-crm")] == [1, 2]
    await relay.stop()
    await ingest.stop()


async def test_events_published_while_the_platform_is_down_are_ingested_later(
    bus: JetStreamBus, memory_log: MemoryEventLog
) -> None:
    for n in range(5):
        await bus.publish("nexus.ext.erp.order_placed", external(n, source="erp"))
    ingest = ExtIngest(bus, memory_log)
    await ingest.start()
    await wait_for_head(memory_log, 5)
    await ingest.stop()
    assert [e.data["n"] for e in await memory_log.read_stream("ext-erp")] == [0, 1, 2, 3, 4]


def invalid_data_event() -> bytes:
    """A CloudEvent of a catalogued type whose data fails the type's schema."""
    for type_ in CATALOG:
        struct = CATALOG.struct_for(type_)
        try:
            msgspec.convert({}, struct)
        except msgspec.ValidationError:
            return encode_event(new_event(type_, {}, source="nexus/test"))
    raise AssertionError("the catalogue has no type with a required field")


async def test_a_thousand_malformed_messages_become_a_thousand_dead_letters(
    bus: JetStreamBus, memory_log: MemoryEventLog
) -> None:
    # Everything that reads from outside is running: ingest, a command router, an event view.
    ingest = ExtIngest(bus, memory_log)
    await ingest.start()
    handled: list[CloudEvent] = []

    async def handle(command: CloudEvent) -> dict[str, object]:
        handled.append(command)
        return {"n": command.data["n"]}

    router = CommandRouter(bus, "svc")
    router.route("do", handle)
    await router.start()
    viewed: list[tuple[str, CloudEvent]] = []

    async def view(delivery: Delivery) -> None:
        # A plain consumer of the raw stream: a malformed event is dead-lettered, nothing is filled in.
        event = decode_delivery(delivery)
        viewed.append((delivery.headers.get("Nats-Msg-Id", ""), event))

    await bus.consume(ConsumerSpec("view", STREAM_EVT, ("nexus.evt.test.>",)), view)
    dead: list[Delivery] = []
    all_dead = asyncio.Event()

    async def dead_letter(delivery: Delivery) -> None:
        dead.append(delivery)
        if len(dead) == 1000:
            all_dead.set()

    await bus.consume(ConsumerSpec("dlq-audit", STREAM_DLQ, ("nexus.dlq.>",), batch=512), dead_letter)

    bad_payloads = [b"not json", b"{}", b'{"specversion": "1.0", "id": "x"}', invalid_data_event()]
    bad_subjects = ["nexus.ext.crm.contact_created", "nexus.cmd.svc.do", "nexus.evt.test.thing.changed"]
    stored = await memory_log.append(
        "thing-1", [new_event("nexus.test.thing.changed", {"n": n}, source="nexus/test") for n in range(1, 11)]
    )
    combos = itertools.cycle(itertools.product(bad_subjects, bad_payloads))
    valid = 0
    for n in range(1000):
        subject, payload = next(combos)
        await bus.publish(subject, payload)
        if n % 100 == 0:
            # Valid traffic in between keeps flowing.
            await bus.publish("nexus.ext.crm.contact_created", external(valid))
            await bus.publish("nexus.cmd.svc.do", encode_event(new_event("nexus.cmd.svc.do", {"n": valid}, source="t")))
            await bus.publish_event(stored[valid])
            valid += 1
    await asyncio.wait_for(all_dead.wait(), WAIT)
    assert all(d.headers["Nexus-Error-Reason"] and d.headers["Nexus-Error"] for d in dead)
    assert {d.headers["Nexus-Consumer"] for d in dead} == {"nexus-ingest", "svc-commands", "view"}
    # The consumers are still running: a command sent now is answered.
    reply = await bus.request(
        "nexus.cmd.svc.do", encode_event(new_event("nexus.cmd.svc.do", {"n": 99}, source="t")), timeout=WAIT
    )
    assert json.loads(reply) == {"accepted": True, "n": 99}
    assert [c.data["n"] for c in handled] == [*range(10), 99]
    # Each valid event reached the view exactly once, in order, under its own id.
    assert viewed == [(event.id, event) for event in stored]
    await wait_for_head(memory_log, 20)
    assert len(await memory_log.read_stream("ext-crm")) == 10


async def test_an_external_event_belongs_to_its_sources_tenant_whatever_the_producer_claims(
    bus: JetStreamBus, memory_log: MemoryEventLog
) -> None:
    from nexus.ingest import register_producer

    await register_producer(memory_log, "crm", "acme")
    ingest = ExtIngest(bus, memory_log)
    await ingest.start()
    try:
        # The producer of source crm claims another tenant: the binding decides, not the claim.
        forged = new_event("com.example.crm.x", {"n": 1}, source="https://crm.example/", id="c-1", tenant="victim")
        await bus.publish("nexus.ext.crm.x", encode_event(forged))
        # A source bound to no tenant is the platform's: nothing the producer says makes it a client's.
        unbound = new_event("com.example.erp.y", {"n": 2}, source="https://erp.example/", id="e-1", tenant="victim")
        await bus.publish("nexus.ext.erp.y", encode_event(unbound))
        await wait_for_head(memory_log, 3)
    finally:
        await ingest.stop()
    [crm] = await memory_log.read_stream("ext-crm")
    [erp] = await memory_log.read_stream("ext-erp")
    assert crm.tenant == "acme"
    assert erp.tenant is None


async def test_an_external_event_too_large_for_the_log_is_dead_lettered_at_once(bus: JetStreamBus) -> None:
    log = MemoryEventLog(max_event_bytes=2048)
    dead: asyncio.Queue[Delivery] = asyncio.Queue()

    async def collect(delivery: Delivery) -> None:
        await dead.put(delivery)

    await bus.consume(ConsumerSpec("dlq-watch", STREAM_DLQ, ("nexus.dlq.nexus-ingest",)), collect)
    ingest = ExtIngest(bus, log)
    await ingest.start()
    try:
        big = new_event("com.example.big", {"blob": "x" * 4096}, source="https://big.example/", id="b-1")
        await bus.publish("nexus.ext.big.blob", encode_event(big))
        await bus.publish("nexus.ext.big.blob", external(1))
        letter = await asyncio.wait_for(dead.get(), WAIT)
        await wait_for_head(log, 1)
    finally:
        await ingest.stop()
    # Dead-lettered naming the limit, not retried until max_deliver; the next event went in.
    assert "at most 2048 bytes" in letter.headers["Nexus-Error-Reason"]
    assert letter.headers["Nexus-Deliveries"] == "1"
    assert [e.causationid for e in await log.read_stream("ext-big")] == ["contact-1"]
    await log.close()
