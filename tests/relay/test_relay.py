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

from nexus.bus import BusError, ConsumerSpec, Delivery, PublishAck
from nexus.bus.events import decode_delivery
from nexus.bus.jetstream import JetStreamBus, PendingAcks
from nexus.eventlog import EventLog, open_event_log
from nexus.eventlog.memory import MemoryEventLog
from nexus.proof import verify_log
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


class StreamView:
    """A plain durable consumer of NEXUS_EVT that keeps every message it is handed.

    No de-duplication and no gap filling from the log: what it holds is what the relay put on the
    stream, so a lost or doubled event shows. A redelivery of the same stream message (a consumer
    matter, not the relay's) is kept once, by its stream sequence.
    """

    def __init__(self) -> None:
        self._by_seq: dict[int, Delivery] = {}
        self._wanted = 0
        self._reached = asyncio.Event()

    async def start(self, bus: JetStreamBus) -> None:
        await bus.consume(ConsumerSpec("view", STREAM_EVT, ("nexus.evt.>",)), self._handle)

    async def _handle(self, delivery: Delivery) -> None:
        self._by_seq.setdefault(delivery.stream_seq, delivery)
        if len(self._by_seq) >= self._wanted:
            self._reached.set()

    @property
    def messages(self) -> list[Delivery]:
        """The distinct stream messages received, in stream order."""
        return [self._by_seq[seq] for seq in sorted(self._by_seq)]

    async def wait_for(self, count: int) -> None:
        self._wanted = count
        self._reached.clear()
        if len(self._by_seq) >= count:
            return
        await asyncio.wait_for(self._reached.wait(), WAIT)


def assert_each_event_once_in_order(messages: Sequence[Delivery], events: Sequence[CloudEvent]) -> None:
    """Every event of ``events`` is on the stream exactly once (by ``Nats-Msg-Id``), and nothing else
    is; each message carries its event and its log position; a log stream's events are in version order."""
    by_id = {event.id: event for event in events}
    ids = [message.headers["Nats-Msg-Id"] for message in messages]
    doubled = sorted({i for i in ids if ids.count(i) > 1})
    assert not doubled, f"published more than once: {doubled[:10]}"
    missing = sorted((by_id[i].position or 0) for i in by_id.keys() - set(ids))
    assert not missing, f"never published, at positions {missing[:10]}"
    assert set(ids) == by_id.keys()
    versions: dict[str, list[int]] = {}
    for message in messages:
        expected = by_id[message.headers["Nats-Msg-Id"]]
        assert decode_delivery(message) == expected
        assert message.headers["Nexus-Position"] == str(expected.position)
        versions.setdefault(expected.streamid or "", []).append(expected.streamversion or 0)
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"stream {stream} out of order: {seen}"


async def stream_count(bus: JetStreamBus) -> int:
    return (await bus.stream_state(STREAM_EVT)).messages


async def test_relay_publishes_every_event_once_and_checkpoints(bus: JetStreamBus, memory_log: MemoryEventLog) -> None:
    view = StreamView()
    await view.start(bus)
    head = await append_events(memory_log, 50)
    relay = Relay(memory_log, bus, lease=False)
    await relay.start()
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    # Events appended while it runs are relayed too.
    head = await append_events(memory_log, 25, start=50)
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    await view.wait_for(75)
    await relay.stop()
    assert_each_event_once_in_order(view.messages, await memory_log.read_all(1))
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
    view = StreamView()
    await view.start(bus)
    try:
        await append_events(log, 3000, per_append=50)
        for round_ in range(2):
            process = await start_relay_process(nats_server, log_url, tmp_path)
            assert process.stdout is not None
            await asyncio.wait_for(wait_started(process.stdout), WAIT)
            # Kill it mid-stream: between a publish and its checkpoint, most likely.
            await view.wait_for(1000 * (round_ + 1))
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await append_events(log, 500, start=3000 + 500 * round_, per_append=50)
        process = await start_relay_process(nats_server, log_url, tmp_path)
        await view.wait_for(4000)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
        assert_each_event_once_in_order(view.messages, await log.read_all(1))
        assert await stream_count(bus) == 4000
    finally:
        await log.close()


async def test_a_message_deleted_from_the_stream_leaves_the_relay_and_the_log_whole(
    bus: JetStreamBus, memory_log: MemoryEventLog
) -> None:
    # Services read the log, not NEXUS_EVT: a message lost from the stream (deleted by an
    # operator, a lost tail) is not filled back in by anyone, and must not stop or rewind the
    # relay, nor touch the log.
    head = await append_events(memory_log, 10)
    relay = Relay(memory_log, bus, lease=False)
    await relay.start()
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    deleted = await bus.get_message(STREAM_EVT, 5)
    assert deleted is not None and await bus.delete_message(STREAM_EVT, 5)
    head = await append_events(memory_log, 10, start=10)
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    await relay.stop()
    # A restarted relay resumes after the last relayed event: it neither republishes the hole
    # nor anything before it.
    relay = Relay(memory_log, bus, lease=False)
    await relay.start()
    head = await append_events(memory_log, 5, start=20)
    await asyncio.wait_for(relay.wait_relayed(head), WAIT)
    await relay.stop()
    events = await memory_log.read_all(1)
    state = await bus.stream_state(STREAM_EVT)
    assert (state.messages, state.last_seq) == (24, 25)
    kept = [await bus.get_message(STREAM_EVT, seq) for seq in range(1, 26) if seq != 5]
    assert [m.headers["Nats-Msg-Id"] if m else None for m in kept] == [e.id for e in events if e.position != 5]
    assert await bus.get_message(STREAM_EVT, 5) is None
    kv = await bus.key_value(RELAY_BUCKET)
    entry = await kv.get("checkpoint")
    assert entry is not None and entry.value == b"25"
    # The log is whole: every position, the deleted message's event included, and it verifies.
    assert [e.position for e in events] == list(range(1, 26))
    assert events[4].id == deleted.headers["Nats-Msg-Id"]
    report = await verify_log(memory_log)
    assert report.ok and report.events == 25 and report.problems == []


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
