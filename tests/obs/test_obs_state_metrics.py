"""Metrics of what the platform holds now: ``FoldMetrics`` (read from a service's fold at scrape
time) and ``StreamMonitor`` (the JetStream server's view of the streams and durable consumers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from nexus.bus import BusUnavailableError, ConsumerState, StreamMonitor, StreamState
from nexus.obs import FoldMetric, FoldMetrics, counts


@dataclass
class Orders:
    statuses: list[str]
    spent: float = 0.0


def _collector() -> tuple[FoldMetrics[Orders], CollectorRegistry]:
    collector = FoldMetrics[Orders](
        FoldMetric("test_orders", "Orders by status.", ("status",), lambda s: counts(s.statuses, ("open", "paid"))),
        FoldMetric("test_spent", "Money spent.", (), lambda s: {(): s.spent}, kind="counter"),
    )
    registry = CollectorRegistry()
    registry.register(collector)
    return collector, registry


def test_fold_metrics_report_the_furthest_state_and_stop_when_untracked() -> None:
    collector, registry = _collector()
    # Nothing tracked: the families are declared, without samples.
    text = generate_latest(registry).decode()
    assert "# TYPE test_orders gauge" in text and "# TYPE test_spent_total counter" in text
    assert registry.get_sample_value("test_orders", {"status": "open"}) is None

    behind = Orders(["open"], spent=1.0)
    ahead = Orders(["open", "open", "paid", "shipped"], spent=3.5)
    stop_behind = collector.track(lambda: behind)
    assert registry.get_sample_value("test_orders", {"status": "open"}) == 1
    # A known status nobody is in yet still has its series, at 0.
    assert registry.get_sample_value("test_orders", {"status": "paid"}) == 0
    stop_ahead = collector.track(lambda: ahead)
    # Two replicas folding one log: the larger figure per label set, never their sum.
    assert registry.get_sample_value("test_orders", {"status": "open"}) == 2
    assert registry.get_sample_value("test_orders", {"status": "shipped"}) == 1
    assert registry.get_sample_value("test_spent_total") == 3.5
    # Read at scrape time: a change to the state shows at the next scrape.
    ahead.statuses.append("paid")
    assert registry.get_sample_value("test_orders", {"status": "paid"}) == 2
    stop_ahead()
    assert registry.get_sample_value("test_orders", {"status": "open"}) == 1
    assert registry.get_sample_value("test_orders", {"status": "shipped"}) is None
    stop_behind()
    stop_behind()  # twice is harmless
    assert registry.get_sample_value("test_spent_total") is None


@dataclass
class FakeBus:
    """The two calls StreamMonitor makes, answering what the test sets (or failing)."""

    streams_now: list[StreamState]
    consumers_now: dict[str, list[ConsumerState]]
    failures: int = 0
    calls: list[str] = field(default_factory=list)

    async def streams(self) -> list[StreamState]:
        self.calls.append("streams")
        if self.failures:
            self.failures -= 1
            raise BusUnavailableError("nats is down")
        return self.streams_now

    async def consumers(self, stream: str) -> list[ConsumerState]:
        return self.consumers_now.get(stream, [])


def _stream(name: str, messages: int) -> StreamState:
    return StreamState(
        name=name,
        subjects=(),
        messages=messages,
        bytes=messages * 100,
        first_seq=1,
        last_seq=messages,
        consumer_count=1,
    )


def _consumer(stream: str, name: str, pending: int, ack_pending: int = 0) -> ConsumerState:
    return ConsumerState(
        stream=stream,
        name=name,
        filter_subjects=(),
        num_pending=pending,
        num_ack_pending=ack_pending,
        num_redelivered=0,
        ack_floor=0,
    )


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_the_stream_monitor_exports_the_servers_view_and_forgets_what_is_gone() -> None:
    bus = FakeBus(
        [_stream("TEST_MON_EVT", 40), _stream("TEST_MON_DLQ", 3)],
        {"TEST_MON_EVT": [_consumer("TEST_MON_EVT", "reactor", 7, 2), _consumer("TEST_MON_EVT", "watcher", 0)]},
    )
    monitor = StreamMonitor(bus)  # type: ignore[arg-type]
    await monitor.poll()
    assert _value("nexus_stream_messages", stream="TEST_MON_EVT") == 40
    assert _value("nexus_stream_messages", stream="TEST_MON_DLQ") == 3
    assert _value("nexus_stream_bytes", stream="TEST_MON_DLQ") == 300
    assert _value("nexus_stream_consumer_pending_messages", stream="TEST_MON_EVT", consumer="reactor") == 7
    assert _value("nexus_stream_consumer_ack_pending_messages", stream="TEST_MON_EVT", consumer="reactor") == 2
    assert _value("nexus_stream_consumer_pending_messages", stream="TEST_MON_EVT", consumer="watcher") == 0

    # The DLQ is redriven and deleted, a consumer is removed: their series go, the rest update.
    bus.streams_now = [_stream("TEST_MON_EVT", 41)]
    bus.consumers_now = {"TEST_MON_EVT": [_consumer("TEST_MON_EVT", "reactor", 0)]}
    await monitor.poll()
    assert _value("nexus_stream_messages", stream="TEST_MON_EVT") == 41
    assert _value("nexus_stream_messages", stream="TEST_MON_DLQ") is None
    assert _value("nexus_stream_bytes", stream="TEST_MON_DLQ") is None
    assert _value("nexus_stream_consumer_pending_messages", stream="TEST_MON_EVT", consumer="reactor") == 0
    assert _value("nexus_stream_consumer_pending_messages", stream="TEST_MON_EVT", consumer="watcher") is None
    assert _value("nexus_stream_consumer_ack_pending_messages", stream="TEST_MON_EVT", consumer="watcher") is None


async def test_the_stream_monitor_keeps_polling_after_the_server_fails() -> None:
    bus = FakeBus([_stream("TEST_MON_RETRY", 5)], {}, failures=2)
    monitor = StreamMonitor(bus, interval=0.01)  # type: ignore[arg-type]
    task = asyncio.create_task(monitor.run())
    try:
        async with asyncio.timeout(10):
            while _value("nexus_stream_messages", stream="TEST_MON_RETRY") != 5:  # noqa: ASYNC110 - polls a gauge
                await asyncio.sleep(0.01)
            # And it goes on polling at its interval once the server answers.
            polls = len(bus.calls)
            while len(bus.calls) < polls + 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert bus.calls[:3] == ["streams", "streams", "streams"]
