"""No data stops the relay: undeliverable events are dead-lettered, forged resume points ignored."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest
from prometheus_client import REGISTRY

from nexus.bus import BusError
from nexus.bus.jetstream import JetStreamBus, PendingAcks
from nexus.cli.commands.dlq import dead_letters, redrive
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import STREAM_EVT, CloudEvent, encode_event, new_event
from nexus.relay import RELAY_BUCKET, Relay

pytestmark = pytest.mark.nats

WAIT = 20.0


@pytest.fixture
async def bus(nats_server: str) -> AsyncIterator[JetStreamBus]:
    bus = await JetStreamBus.connect(nats_server)
    yield bus
    await bus.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def thing(n: int, **extra: object) -> CloudEvent:
    return new_event("nexus.test.thing.changed", {"n": n, **extra}, source="nexus/test")


async def append(log: MemoryEventLog, *events: CloudEvent) -> int:
    for event in events:
        await log.append("thing-1", [event])
    return await log.head()


async def relayed_positions(bus: JetStreamBus) -> list[int]:
    """The Nexus-Position of every message on NEXUS_EVT, in stream order."""
    state = await bus.stream_state(STREAM_EVT)
    out = []
    for seq in range(max(state.first_seq, 1), state.last_seq + 1):
        msg = await bus.get_message(STREAM_EVT, seq)
        if msg is not None:
            out.append(int(msg.headers.get("Nexus-Position", "-1")))
    return out


async def wait_until_relayed(bus: JetStreamBus, positions: set[int]) -> None:
    async with asyncio.timeout(WAIT):
        # The stream lives in the server: nothing here could signal it, so it is polled.
        while not positions <= set(await relayed_positions(bus)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_an_event_nats_cannot_carry_is_dead_lettered_and_the_relay_goes_on(bus: JetStreamBus) -> None:
    # Events written before the size limit existed: the log takes them (its limit is set
    # above NATS's 1 MiB max_payload), the bus cannot carry them.
    log = MemoryEventLog(max_event_bytes=4 * 1024 * 1024)
    before_large = metric("nexus_relay_events_dead_lettered_total", reason="too_large")
    before_subject = metric("nexus_relay_events_dead_lettered_total", reason="bad_subject")
    big = thing(2, text="x" * (1024 * 1024 + 100_000))
    badly_typed = new_event("not-a-platform-type", {"n": 5}, source="nexus/test")
    head = await append(log, thing(1), big, thing(3), thing(4), badly_typed, thing(6))
    relay = Relay(log, bus, lease=False, batch=3)
    try:
        await relay.start()
        await asyncio.wait_for(relay.wait_relayed(head), WAIT)
        # Every other event reached NEXUS_EVT, in order.
        assert await relayed_positions(bus) == [1, 3, 4, 6]
        assert relay.healthy
        # The relay went on after a restart too, and new events follow.
        await relay.stop()
        relay = Relay(log, bus, lease=False)
        await relay.start()
        head = await append(log, thing(7), thing(8))
        await asyncio.wait_for(relay.wait_relayed(head), WAIT)
        await wait_until_relayed(bus, {7, 8})
    finally:
        await relay.stop()
    kv = await bus.key_value(RELAY_BUCKET)
    entry = await kv.get("checkpoint")
    assert entry is not None and entry.value == str(head).encode()
    # A placeholder per undeliverable event on nexus.dlq.relay, naming it and why.
    letters = [message async for message in dead_letters(bus, "relay")]
    assert len(letters) == 2
    large, subject = (message.headers for message in letters)
    assert large["Nexus-Error"] == "EventTooLarge"
    assert (large["Nexus-Event-Id"], large["Nexus-Event-Position"], large["Nexus-Event-Stream"]) == (
        big.id,
        "2",
        "thing-1",
    )
    assert large["Nexus-Event-Type"] == "nexus.test.thing.changed"
    assert int(large["Nexus-Event-Size"]) > 1024 * 1024
    assert "accepts at most" in large["Nexus-Error-Reason"]
    assert large["Nexus-Original-Subject"] == "nexus.evt.test.thing.changed"
    assert len(letters[0].data or b"") < 2000
    assert subject["Nexus-Error"] == "UndeliverableSubject"
    assert subject["Nexus-Event-Id"] == badly_typed.id and subject["Nexus-Event-Position"] == "5"
    assert "not-a-platform-type" in subject["Nexus-Error-Reason"]
    # Counted for an alert, once each (the restart did not count them again).
    assert metric("nexus_relay_events_dead_lettered_total", reason="too_large") == before_large + 1
    assert metric("nexus_relay_events_dead_lettered_total", reason="bad_subject") == before_subject + 1
    # The events stay in the log.
    assert await log.get_event(big.id) is not None
    # `nexus dlq redrive` leaves the placeholders alone: they are not the events.
    count, problems = await redrive(bus, "relay")
    assert count == 0 and len(problems) == 2
    await log.close()


async def test_a_forged_nexus_position_is_ignored_when_the_relay_resumes(bus: JetStreamBus) -> None:
    log = MemoryEventLog()
    out_of_range = metric("nexus_relay_forged_positions_total", reason="out_of_range")
    mismatch = metric("nexus_relay_forged_positions_total", reason="mismatch")
    head = await append(log, *(thing(n) for n in range(10)))
    await run_relay_until_relayed(log, bus, head)
    # While no relay runs, events are appended and someone publishes a copy of event 15
    # under another id, claiming its position: resuming after it would skip 11-15.
    head = await append(log, *(thing(n) for n in range(10, 20)))
    [copied] = await log.read_all(15, 1)
    forged = msgspec.structs.replace(copied, id=str(uuid.uuid4()))
    await bus.publish(
        "nexus.evt.test.thing.changed", encode_event(forged), msg_id=forged.id, headers={"Nexus-Position": "15"}
    )
    await run_relay_until_relayed(log, bus, head)
    assert metric("nexus_relay_forged_positions_total", reason="mismatch") == mismatch + 1
    # Then a message claiming a position far beyond the log's head: resuming after it would
    # relay nothing ever again.
    await bus.publish(
        "nexus.evt.test.thing.changed", b"{}", msg_id=str(uuid.uuid4()), headers={"Nexus-Position": "999999999"}
    )
    head = await append(log, *(thing(n) for n in range(20, 25)))
    await run_relay_until_relayed(log, bus, head)
    assert metric("nexus_relay_forged_positions_total", reason="out_of_range") == out_of_range + 1
    # Every event is on NEXUS_EVT, beside the two forged messages.
    positions = await relayed_positions(bus)
    assert sorted(positions) == sorted([*range(1, head + 1), 15, 999999999])
    await log.close()


async def run_relay_until_relayed(log: MemoryEventLog, bus: JetStreamBus, head: int) -> None:
    """Start a relay, wait until NEXUS_EVT holds every position up to ``head``, and stop it."""
    relay = Relay(log, bus, lease=False)
    try:
        await relay.start()
        await wait_until_relayed(bus, set(range(1, head + 1)))
        await asyncio.wait_for(relay.wait_relayed(head), WAIT)
        assert relay.position == head
    finally:
        await relay.stop()


async def test_a_checkpoint_beyond_the_log_is_not_believed(bus: JetStreamBus) -> None:
    log = MemoryEventLog()
    head = await append(log, *(thing(n) for n in range(5)))
    kv = await bus.key_value(RELAY_BUCKET)
    await kv.put("checkpoint", b"999999")
    relay = Relay(log, bus, lease=False)
    try:
        await relay.start()
        await wait_until_relayed(bus, set(range(1, head + 1)))
    finally:
        await relay.stop()
    await log.close()


async def test_a_failing_bus_is_retried_with_a_growing_back_off_and_reported_unhealthy(bus: JetStreamBus) -> None:
    log = MemoryEventLog()
    head = await append(log, *(thing(n) for n in range(3)))
    send_events = bus.send_events
    attempts: list[float] = []
    broken = True
    loop = asyncio.get_running_loop()

    async def flaky(events: Sequence[CloudEvent]) -> PendingAcks:
        if broken:
            attempts.append(loop.time())
            raise BusError("simulated: JetStream is not answering")
        return await send_events(events)

    bus.send_events = flaky  # type: ignore[method-assign]
    failures = metric("nexus_relay_failures_total")
    relay = Relay(log, bus, lease=False)
    try:
        await relay.start()
        await asyncio.sleep(2.6)
        # Attempts at about 0, 0.5 and 1.5 s (the next one is due at 3.5 s): a fixed pause of
        # 0.5 s would have made six, and a failed attempt is noticed at once.
        assert 3 <= len(attempts) <= 4, attempts
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[0] < 0.9, gaps
        assert all(later > earlier * 1.5 for earlier, later in itertools.pairwise(gaps)), gaps
        assert not relay.healthy and relay.consecutive_failures == len(attempts)
        assert relay.last_error is not None and "simulated" in relay.last_error
        assert metric("nexus_relay_healthy") == 0
        assert metric("nexus_relay_failures_total") >= failures + len(attempts)
        # The bus recovers: so does the relay, and it says so.
        broken = False
        await asyncio.wait_for(relay.wait_relayed(head), WAIT)
        assert relay.healthy and metric("nexus_relay_healthy") == 1
    finally:
        await relay.stop()
    await log.close()
