"""The outbox relay: every event published once, resumption, crash recovery, leader election."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from nexus.bus import BusError, ConsumerSpec, PublishAck
from nexus.bus.events import EventConsumer
from nexus.bus.jetstream import JetStreamBus, PendingAcks
from nexus.eventlog import EventLog, open_event_log
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import STREAM_EVT, CloudEvent, new_event
from nexus.relay import RELAY_BUCKET, Relay

pytestmark = pytest.mark.nats

WAIT = 20.0


@pytest.fixture
async def bus(nats_server: str) -> AsyncIterator[JetStreamBus]:
    bus = await JetStreamBus.connect(nats_server)
    yield bus
    await bus.close()


async def append_events(log: EventLog, count: int, streams: int = 10, start: int = 0, per_append: int = 1) -> int:
    """Append ``count`` events spread over ``streams`` streams, ``per_append`` at a time; return the log head."""
    for first in range(start, start + count, per_append):
        events = [
            new_event("nexus.test.thing.changed", {"n": n}, source="nexus/test")
            for n in range(first, min(first + per_append, start + count))
        ]
        await log.append(f"thing-{(first // per_append) % streams}", events)
    return await log.head()


class Recorder:
    """A projection that records what it applies, and signals when it has seen a given count."""

    def __init__(self) -> None:
        self.applied: list[CloudEvent] = []
        self._wanted = 0
        self._reached = asyncio.Event()

    async def apply(self, event: CloudEvent) -> None:
        self.applied.append(event)
        if len(self.applied) >= self._wanted:
            self._reached.set()

    async def wait_for(self, count: int) -> None:
        self._wanted = count
        self._reached.clear()
        if len(self.applied) >= count:
            return
        await asyncio.wait_for(self._reached.wait(), WAIT)


async def stream_count(bus: JetStreamBus) -> int:
    return (await bus.stream_state(STREAM_EVT)).messages


async def test_relay_publishes_every_event_once_and_checkpoints(bus: JetStreamBus, memory_log: MemoryEventLog) -> None:
    recorder = Recorder()
    consumer = EventConsumer(bus, memory_log, ConsumerSpec("view", STREAM_EVT, ("nexus.evt.>",)), recorder.apply)
    await consumer.start()
    head = await append_events(memory_log, 50)
    relay = Relay(memory_log, bus, lease=False)
    await relay.start()
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    # Events appended while it runs are relayed too.
    head = await append_events(memory_log, 25, start=50)
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    await recorder.wait_for(75)
    await relay.stop()
    assert sorted(e.position or 0 for e in recorder.applied) == list(range(1, 76))
    assert await stream_count(bus) == 75
    kv = await bus.key_value(RELAY_BUCKET)
    entry = await kv.get("checkpoint")
    assert entry is not None and entry.value == b"75"


async def test_relay_republishes_a_tail_jetstream_lost(bus: JetStreamBus, memory_log: MemoryEventLog) -> None:
    head = await append_events(memory_log, 10)
    events = await memory_log.read_all(1)
    # JetStream kept events 1-7 but lost 8-10 (not yet fsynced), though the checkpoint says 10.
    await bus.publish_events(events[:7])
    kv = await bus.key_value(RELAY_BUCKET)
    await kv.put("checkpoint", b"10")
    relay = Relay(memory_log, bus, lease=False)
    await relay.start()
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    await relay.stop()
    assert await stream_count(bus) == 10
    last = await bus.get_message(STREAM_EVT, 10)
    assert last is not None and last.headers["Nexus-Position"] == "10"


async def test_relay_without_relayed_events_in_the_stream_resumes_from_its_checkpoint(
    bus: JetStreamBus, memory_log: MemoryEventLog
) -> None:
    await append_events(memory_log, 10)
    kv = await bus.key_value(RELAY_BUCKET)
    await kv.put("checkpoint", b"6")
    relay = Relay(memory_log, bus, lease=False)
    await relay.start()
    await asyncio.wait_for(relay.wait_relayed(10), WAIT)
    await relay.stop()
    assert await stream_count(bus) == 4


async def test_batches_in_flight_settle_in_order_and_a_failed_one_is_published_again(
    bus: JetStreamBus, memory_log: MemoryEventLog
) -> None:
    head = await append_events(memory_log, 100)
    send_events = bus.send_events
    sent: list[list[int]] = []

    class Refused:
        """A batch JetStream never stored, while the batches after it were."""

        async def acks(self) -> list[PublishAck]:
            raise BusError("JetStream refused the message: simulated")

        def discard(self) -> None:
            pass

    async def flaky(events: Sequence[CloudEvent]) -> PendingAcks | Refused:
        sent.append([e.position or 0 for e in events])
        if len(sent) == 3:
            return Refused()
        return await send_events(events)

    bus.send_events = flaky  # type: ignore[method-assign]
    relay = Relay(memory_log, bus, lease=False, batch=10, window=4)
    await relay.start()
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    await relay.stop()
    refused = sent[2]
    # Later batches went out before the refusal was known: the pipeline was really windowed.
    assert sent.index(refused) + 1 < len(sent) and sent[3][0] > refused[-1]
    # It resumed after the last contiguous acknowledged event, not after what the stream holds.
    assert any(batch[0] == refused[0] for batch in sent[3:])
    assert await stream_count(bus) == 100
    kv = await bus.key_value(RELAY_BUCKET)
    entry = await kv.get("checkpoint")
    assert entry is not None and entry.value == b"100"


def start_relay_process(nats_url: str, log_url: str, data_dir: Path) -> asyncio.Future[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "NEXUS_NATS_URL": nats_url,
        "NEXUS_EVENT_LOG_URL": log_url,
        "NEXUS_DATA_DIR": str(data_dir),
        "NEXUS_LOG_LEVEL": "info",
    }
    return asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            sys.executable, "-m", "nexus.relay", env=env, stdout=asyncio.subprocess.PIPE, stderr=None
        )
    )


async def wait_started(stdout: asyncio.StreamReader) -> None:
    """Read the relay's JSON log lines until the one that says it started."""
    while True:
        line = await stdout.readline()
        assert line, "the relay exited before it started"
        record = json.loads(line)
        assert record["service"] == "relay"
        if record["message"] == "relay started":
            return


@pytest.mark.slow
async def test_a_killed_relay_process_loses_nothing_and_nothing_is_applied_twice(
    bus: JetStreamBus, nats_server: str, tmp_path: Path
) -> None:
    log_url = f"sqlite:///{tmp_path / 'events.db'}"
    log = await open_event_log(log_url)
    recorder = Recorder()
    consumer = EventConsumer(bus, log, ConsumerSpec("view", STREAM_EVT, ("nexus.evt.>",)), recorder.apply)
    await consumer.start()
    try:
        await append_events(log, 3000, per_append=50)
        for round_ in range(2):
            process = await start_relay_process(nats_server, log_url, tmp_path)
            assert process.stdout is not None
            await asyncio.wait_for(wait_started(process.stdout), WAIT)
            # Kill it mid-stream: between a publish and its checkpoint, most likely.
            await recorder.wait_for(1000 * (round_ + 1))
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await append_events(log, 500, start=3000 + 500 * round_, per_append=50)
        process = await start_relay_process(nats_server, log_url, tmp_path)
        await recorder.wait_for(4000)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
        positions = [e.position for e in recorder.applied]
        assert len(positions) == len(set(positions)) == 4000
        assert await stream_count(bus) == 4000
    finally:
        await consumer.stop()
        await log.close()


async def test_a_standby_relay_takes_over_when_the_leader_dies(nats_server: str, memory_log: MemoryEventLog) -> None:
    first_bus = await JetStreamBus.connect(nats_server)
    second_bus = await JetStreamBus.connect(nats_server)
    first = Relay(memory_log, first_bus, owner="first", lease_ttl=1.5)
    second = Relay(memory_log, second_bus, owner="second", lease_ttl=1.5)
    try:
        await first.start()
        await asyncio.wait_for(first.leading.wait(), WAIT)
        await second.start()
        head = await append_events(memory_log, 20)
        await asyncio.wait_for(first.wait_relayed(head), WAIT)
        assert not second.is_leader
        # The leader dies without releasing its lease: its connection is gone.
        assert first._task is not None
        first._task.cancel()
        await first_bus.nc.close()
        loop = asyncio.get_running_loop()
        died = loop.time()
        await asyncio.wait_for(second.leading.wait(), WAIT)
        assert loop.time() - died < 5.0
        head = await append_events(memory_log, 20, start=20)
        await asyncio.wait_for(second.wait_relayed(head), WAIT)
        assert await stream_count(second_bus) == 40
    finally:
        await second.stop()
        await second_bus.close()
        await first_bus.close()
