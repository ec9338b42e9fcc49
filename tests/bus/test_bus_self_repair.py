"""The bus repairs what was deleted under it, and its retry loops stay quiet (issue 9, finding 11).

A deleted NEXUS_EVT made a trigger consumer ask again at once, forever: 190,000 log lines in
30 s and no recovery. Now the consumer recreates its stream and its durable, backs off, and
logs a repeated error once per interval with a count.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from nexus.bus import BusError, ConsumerSpec, Delivery
from nexus.bus.jetstream import JetStreamBus
from nexus.obs import Backoff, RateLimitedLog
from nexus.proto import STREAM_EVT

pytestmark = pytest.mark.nats


async def publish_until_stored(bus: JetStreamBus, subject: str, payload: bytes, within: float = 10.0) -> None:
    """Publish, retrying while the stream is missing (as the relay's own retry loop does)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await bus.publish(subject, payload)
            return
        except BusError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def wait_for(received: list[bytes], payload: bytes, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while payload not in received:
        assert time.monotonic() < deadline, f"{payload!r} not consumed; got {received}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("accelerator", ["on", "off"])
async def test_a_deleted_stream_and_a_deleted_consumer_are_recreated_under_a_running_consumer(
    nats_server: str, caplog: pytest.LogCaptureFixture, accelerator: str
) -> None:
    bus = await JetStreamBus.connect(nats_server, accelerator=accelerator)
    received: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        received.append(delivery.data)

    consumer = await bus.consume(ConsumerSpec("repair-reactor", STREAM_EVT, ("nexus.evt.>",)), handler)
    try:
        await bus.publish("nexus.evt.kam.thing.happened", b"before")
        await wait_for(received, b"before")

        # Someone deletes NEXUS_EVT (and with it every consumer on it) under the running consumer.
        caplog.clear()
        caplog.set_level(logging.WARNING, logger="nexus.bus")
        assert await bus.js.delete_stream(STREAM_EVT)
        await asyncio.sleep(2.0)
        # The stream is back without anyone restarting anything, and the consumer goes on.
        info = await bus.js.stream_info(STREAM_EVT)
        assert "nexus.evt.>" in (info.config.subjects or [])
        await publish_until_stored(bus, "nexus.evt.kam.thing.happened", b"after the stream")
        await wait_for(received, b"after the stream")
        # A handful of lines, not a hot loop: the error status is logged once per interval.
        lines = [r for r in caplog.records if r.name == "nexus.bus"]
        assert 1 <= len(lines) <= 6, [r.getMessage() for r in lines]
        assert any("stream NEXUS_EVT was missing and has been recreated" in r.getMessage() for r in lines)

        # Only the durable consumer is deleted: recreated too.
        caplog.clear()
        await bus.js.delete_consumer(STREAM_EVT, "repair-reactor")
        await asyncio.sleep(1.0)
        await bus.publish("nexus.evt.kam.thing.happened", b"after the consumer")
        await wait_for(received, b"after the consumer")
        assert any("durable consumer was missing" in r.getMessage() for r in caplog.records)
    finally:
        await consumer.stop()
        await bus.close()


def test_a_repeated_error_is_logged_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    quiet = RateLimitedLog(logging.getLogger("nexus.test.quiet"), interval=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="nexus.test.quiet")
    # 1000 failures in 9.99 s: one line.
    for step in range(1000):
        now[0] = step * 0.00999
        quiet.warning("pull", "pull failed: %s", "no responders")
    assert [r.getMessage() for r in caplog.records] == ["pull failed: no responders"]
    assert quiet.held("pull") == 999
    # The first one after the interval says how many were held back; a different key is independent.
    now[0] = 10.5
    assert quiet.warning("pull", "pull failed: %s", "no responders")
    assert quiet.warning("other", "other failure")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[1] == "pull failed: no responders (999 more in the last 10 s)"
    assert caplog.records[1].repeated == 999  # type: ignore[attr-defined]
    assert messages[2] == "other failure"
    # Once the condition is over, the next occurrence is logged at once.
    assert quiet.clear("pull") == 0
    assert quiet.warning("pull", "pull failed again")


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.1, 0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1
