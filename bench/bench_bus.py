"""The bus: relay, consumer, end to end and latency on the embedded defaults, with a nats-py peer.

Every measurement runs on a fresh embedded nats-server (JetStream file storage) in the
suite's work directory, so no run sees another's messages or de-duplication state. Relay,
consumer, end to end and publishing are measured on both paths of the JetStream bus in the
same run: the accelerator (``NEXUS_BUS_ACCELERATOR=on``, the default on the tested nats-py)
and nats-py's public API (``off``); the rows of the public path say "public API".
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats

from bench._harness import Context, Row, percentile, target_row
from nexus.bus import Consumer, ConsumerSpec, Delivery, OutboundMessage
from nexus.bus.embedded import EmbeddedNats
from nexus.bus.events import decode_delivery
from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog import EventLog, open_event_log
from nexus.proto import STREAM_EVT, CloudEvent, new_event
from nexus.relay import Relay

SUITE = "bus"
_runs = 0


def _fresh_dir(ctx: Context, name: str) -> Path:
    global _runs
    _runs += 1
    return ctx.workdir / f"{name}-{_runs}"


_client_urls: dict[int, str] = {}
"""The operator URL of each running bench server, by its bus (for the plain nats-py peer)."""


@asynccontextmanager
async def _server(ctx: Context, *, sync_always: bool = False, accelerator: str = "on") -> AsyncIterator[JetStreamBus]:
    async with EmbeddedNats(_fresh_dir(ctx, "nats"), sync_always=sync_always) as server:
        bus = await JetStreamBus.connect(server.client_url(), accelerator=accelerator)
        assert bus.accelerated is (accelerator == "on")
        _client_urls[id(bus)] = server.client_url()
        try:
            yield bus
        finally:
            _client_urls.pop(id(bus), None)
            await bus.close()


async def _open_log(ctx: Context) -> EventLog:
    """The embedded default log (SQLite) in the work directory; memory:// where it is not available."""
    try:
        return await open_event_log(f"sqlite:///{_fresh_dir(ctx, 'events')}.db")
    except ImportError:
        return await open_event_log("memory://")


def _events(count: int) -> list[CloudEvent]:
    return [new_event("nexus.bench.thing.changed", {"n": n}, source="nexus/bench") for n in range(count)]


async def _append(log: EventLog, events: list[CloudEvent], per_append: int = 500) -> int:
    for first in range(0, len(events), per_append):
        await log.append(f"thing-{(first // per_append) % 50}", events[first : first + per_append])
    return await log.head()


async def _fill(log: EventLog, count: int, per_append: int = 500) -> int:
    return await _append(log, _events(count), per_append)


class _Projection:
    """A simple projection fed by a plain durable consumer (``bus.consume``).

    Per delivery: the CloudEvent decoded and checked against the catalogue (``decode_delivery``),
    skipped when its stream already has that version (a redelivery), else a count and the last
    version per stream; it signals when it has applied ``wanted`` events.
    """

    def __init__(self, wanted: int) -> None:
        self.counts: dict[str, int] = {}
        self.versions: dict[str, int] = {}
        self.applied = 0
        self.wanted = wanted
        self.done = asyncio.Event()
        self.seen_at: dict[str, float] = {}
        self.track = False

    async def handle(self, delivery: Delivery) -> None:
        event = decode_delivery(delivery)
        stream = event.streamid or ""
        version = event.streamversion or 0
        if version <= self.versions.get(stream, 0):
            return
        self.versions[stream] = version
        self.counts[stream] = self.counts.get(stream, 0) + 1
        self.applied += 1
        if self.track:
            self.seen_at[event.id] = time.perf_counter()
        if self.applied >= self.wanted:
            self.done.set()

    async def start(self, bus: JetStreamBus) -> Consumer:
        return await bus.consume(_spec("projection"), self.handle)


def _spec(name: str) -> ConsumerSpec:
    return ConsumerSpec(name, STREAM_EVT, ("nexus.evt.>",), batch=512, max_ack_pending=8192)


async def _relay_alone(ctx: Context, count: int, accelerator: str = "on") -> tuple[int, float]:
    """Steady state: from ``Relay.start()`` until every event is acknowledged (the fill is not timed)."""
    log = await _open_log(ctx)
    head = await _fill(log, count)
    async with _server(ctx, accelerator=accelerator) as bus:
        relay = Relay(log, bus, lease=False)
        started = time.perf_counter()
        await relay.start()
        await relay.wait_relayed(head)
        elapsed = time.perf_counter() - started
        await relay.stop()
    await log.close()
    return count, elapsed


async def _relay_start_up(ctx: Context) -> float:
    """Milliseconds from ``Relay.start()`` (lease on) to the first event acknowledged, on a fresh server."""
    log = await _open_log(ctx)
    await _fill(log, 1)
    async with _server(ctx) as bus:
        relay = Relay(log, bus)
        started = time.perf_counter()
        await relay.start()
        await relay.wait_relayed(1)
        elapsed = time.perf_counter() - started
        await relay.stop()
    await log.close()
    return elapsed * 1000


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def _consumer_alone(ctx: Context, count: int, accelerator: str = "on") -> tuple[int, float]:
    log = await _open_log(ctx)
    await _fill(log, count)
    events = await log.read_all(1)
    async with _server(ctx, accelerator=accelerator) as bus:
        for first in range(0, count, 1000):
            await bus.publish_events(events[first : first + 1000])
        projection = _Projection(count)
        started = time.perf_counter()
        consumer = await projection.start(bus)
        await projection.done.wait()
        elapsed = time.perf_counter() - started
        await consumer.stop()
    await log.close()
    return count, elapsed


async def _end_to_end(ctx: Context, count: int, accelerator: str = "on") -> tuple[int, float]:
    log = await _open_log(ctx)
    async with _server(ctx, accelerator=accelerator) as bus:
        projection = _Projection(count)
        consumer = await projection.start(bus)
        relay = Relay(log, bus, lease=False)
        await relay.start()
        # The producer's events are built before the clock starts: what is timed is appending
        # them (100 per append), relaying and consuming.
        events = _events(count)
        started = time.perf_counter()
        await _append(log, events, per_append=100)
        await projection.done.wait()
        elapsed = time.perf_counter() - started
        await relay.stop()
        await consumer.stop()
    await log.close()
    return count, elapsed


async def _latency(ctx: Context, count: int, rate: float) -> list[float]:
    log = await _open_log(ctx)
    async with _server(ctx) as bus:
        projection = _Projection(count)
        projection.track = True
        consumer = await projection.start(bus)
        relay = Relay(log, bus, lease=False)
        await relay.start()
        appended: dict[str, float] = {}
        interval = 1.0 / rate
        start = time.perf_counter()
        for n in range(count):
            # Pace the producer at ``rate`` events/s: the open-loop load the latency is held to.
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            event = new_event("nexus.bench.thing.changed", {"n": n}, source="nexus/bench")
            appended[event.id] = time.perf_counter()
            await log.append(f"thing-{n % 50}", [event])
        await projection.done.wait()
        await relay.stop()
        await consumer.stop()
    await log.close()
    return [(projection.seen_at[i] - t) * 1000 for i, t in appended.items()]


async def _publish(ctx: Context, count: int, *, sync_always: bool, accelerator: str = "on") -> tuple[int, float]:
    """Pipelined publish in batches of 1,000 (server start-up not timed)."""
    async with _server(ctx, sync_always=sync_always, accelerator=accelerator) as bus:
        started = time.perf_counter()
        for first in range(0, count, 1000):
            await bus.publish_many(
                [
                    OutboundMessage("nexus.evt.bench.thing.changed", b"x" * 300, msg_id=f"m{n}")
                    for n in range(first, min(first + 1000, count))
                ]
            )
        elapsed = time.perf_counter() - started
    return count, elapsed


async def _peer(ctx: Context, count: int) -> tuple[float, float]:
    """Plain nats-py: js.publish awaited in windows of 1,000, then pull fetch-and-ack."""
    async with _server(ctx) as bus:
        nc = await nats.connect(_client_urls[id(bus)])
        js = nc.jetstream()
        started = time.perf_counter()
        for first in range(0, count, 1000):
            await asyncio.gather(
                *(
                    js.publish("nexus.evt.bench.thing.changed", b"x" * 300, headers={"Nats-Msg-Id": f"p{n}"})
                    for n in range(first, min(first + 1000, count))
                )
            )
        publish_rate = count / (time.perf_counter() - started)
        sub = await js.pull_subscribe("nexus.evt.>", durable="peer", stream=STREAM_EVT)
        started = time.perf_counter()
        got = 0
        while got < count:
            for msg in await sub.fetch(batch=512, timeout=5):
                await msg.ack()
                got += 1
        fetch_rate = count / (time.perf_counter() - started)
        await nc.close()
    return publish_rate, fetch_rate


async def run(ctx: Context) -> list[Row]:
    count = ctx.scale(50_000, 20_000)
    # Runs are short and the machine is shared: never fewer than three, the median reported.
    repeats = max(ctx.repeats, 3)
    rows: list[Row] = []

    relay_rates = []
    for _ in range(repeats):
        done, elapsed = await _relay_alone(ctx, count)
        relay_rates.append(done / elapsed)
    relay_rate = _median(relay_rates)
    peer_publish, peer_fetch = await _peer(ctx, count)
    rows.append(
        target_row(
            SUITE,
            f"relay alone ({count:,} events, log → NEXUS_EVT)",
            relay_rate,
            "events/s",
            at_least=30_000,
            peer=f"nats-py js.publish x1000 {peer_publish:,.0f} (x{relay_rate / peer_publish:.1f})",
            note="steady state: start() to last ack, fill excluded",
        )
    )
    public_relay = _median(
        [done / elapsed for done, elapsed in [await _relay_alone(ctx, count, "off") for _ in range(repeats)]]
    )
    rows.append(
        target_row(
            SUITE,
            f"relay alone, public API ({count:,} events, js.publish_async)",
            public_relay,
            "events/s",
            peer=f"accelerated x{relay_rate / public_relay:.1f}",
            note="NEXUS_BUS_ACCELERATOR=off",
        )
    )
    start_up = _median([await _relay_start_up(ctx) for _ in range(repeats)])
    rows.append(target_row(SUITE, "relay start-up (start() → first event acknowledged, lease on)", start_up, "ms"))

    consumer_rates = []
    for _ in range(repeats):
        done, elapsed = await _consumer_alone(ctx, count)
        consumer_rates.append(done / elapsed)
    consumer_rate = _median(consumer_rates)
    rows.append(
        target_row(
            SUITE,
            "consumer alone (bus.consume, simple projection)",
            consumer_rate,
            "events/s",
            at_least=30_000,
            peer=f"nats-py fetch+ack {peer_fetch:,.0f} (x{consumer_rate / peer_fetch:.1f})",
        )
    )

    public_consumer = _median(
        [done / elapsed for done, elapsed in [await _consumer_alone(ctx, count, "off") for _ in range(repeats)]]
    )
    rows.append(
        target_row(
            SUITE,
            "consumer alone, public API (fetch, ack/nak/term)",
            public_consumer,
            "events/s",
            peer=f"accelerated x{consumer_rate / public_consumer:.1f}",
            note="NEXUS_BUS_ACCELERATOR=off",
        )
    )

    e2e_rates = []
    for _ in range(repeats):
        done, elapsed = await _end_to_end(ctx, count)
        e2e_rates.append(done / elapsed)
    rows.append(
        target_row(
            SUITE,
            "end to end (append → relay → consumer)",
            _median(e2e_rates),
            "events/s",
            at_least=15_000,
            note="one process; appends of 100; events built before timing",
        )
    )
    public_e2e = _median(
        [done / elapsed for done, elapsed in [await _end_to_end(ctx, count, "off") for _ in range(repeats)]]
    )
    rows.append(
        target_row(
            SUITE,
            "end to end, public API (append → relay → consumer)",
            public_e2e,
            "events/s",
            peer=f"accelerated x{_median(e2e_rates) / public_e2e:.1f}",
            note="NEXUS_BUS_ACCELERATOR=off",
        )
    )

    latencies = await _latency(ctx, ctx.scale(10_000, 2_000), 1000.0)
    rows.append(target_row(SUITE, "append → consumer p50 at 1,000 events/s", percentile(latencies, 50), "ms"))
    rows.append(
        target_row(SUITE, "append → consumer p99 at 1,000 events/s", percentile(latencies, 99), "ms", at_most=25)
    )

    for sync_always in (False, True):
        rates = []
        for _ in range(repeats):
            done, elapsed = await _publish(ctx, count, sync_always=sync_always)
            rates.append(done / elapsed)
        rate = _median(rates)
        label = "always" if sync_always else "default"
        rows.append(target_row(SUITE, f"publish, pipelined, NEXUS_NATS_SYNC={label}", rate, "msg/s"))
    public_publish = _median(
        [
            done / elapsed
            for done, elapsed in [
                await _publish(ctx, count, sync_always=False, accelerator="off") for _ in range(repeats)
            ]
        ]
    )
    rows.append(
        target_row(
            SUITE,
            "publish, public API (js.publish_async), NEXUS_NATS_SYNC=default",
            public_publish,
            "msg/s",
            note="NEXUS_BUS_ACCELERATOR=off",
        )
    )
    return rows
