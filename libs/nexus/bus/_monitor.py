"""The streams and durable consumers as the JetStream server reports them, as Prometheus gauges.

A consumer's own process reports its lag only while it runs and receives messages
(``nexus_consumer_lag_messages``): a consumer whose every replica is down, or that stalls, keeps
its last figure or none. The server knows the truth for every durable, so one process (the relay
process, ``python -m nexus.relay``) asks it every few seconds and exports what it says: the size
of every stream (the dead-letter stream's is the DLQ size) and the pending messages of every
durable consumer. A stream or consumer that disappears loses its series.
"""

from __future__ import annotations

import asyncio
import logging

from nexus.bus._metrics import STREAM_BYTES, STREAM_CONSUMER_ACK_PENDING, STREAM_CONSUMER_PENDING, STREAM_MESSAGES
from nexus.bus._port import Bus, BusError
from nexus.obs import Backoff, RateLimitedLog

logger = logging.getLogger("nexus.bus.monitor")

__all__ = ["StreamMonitor"]


class StreamMonitor:
    """Polls the server's view of every stream and durable consumer into gauges."""

    def __init__(self, bus: Bus, *, interval: float = 5.0) -> None:
        self.bus = bus
        self.interval = interval
        """Seconds between polls: a scrape every 15 s sees figures at most this old."""
        self._streams: set[str] = set()
        self._consumers: set[tuple[str, str]] = set()

    async def poll(self) -> None:
        """Ask the server once and update the gauges (removing what no longer exists)."""
        streams = await self.bus.streams()
        consumers: set[tuple[str, str]] = set()
        for stream in streams:
            STREAM_MESSAGES.labels(stream.name).set(stream.messages)
            STREAM_BYTES.labels(stream.name).set(stream.bytes)
            for consumer in await self.bus.consumers(stream.name):
                consumers.add((stream.name, consumer.name))
                STREAM_CONSUMER_PENDING.labels(stream.name, consumer.name).set(consumer.num_pending)
                STREAM_CONSUMER_ACK_PENDING.labels(stream.name, consumer.name).set(consumer.num_ack_pending)
        names = {stream.name for stream in streams}
        for name in self._streams - names:
            STREAM_MESSAGES.remove(name)
            STREAM_BYTES.remove(name)
        for labels in self._consumers - consumers:
            STREAM_CONSUMER_PENDING.remove(*labels)
            STREAM_CONSUMER_ACK_PENDING.remove(*labels)
        self._streams, self._consumers = names, consumers

    async def run(self) -> None:
        """Poll until cancelled; a failed poll is logged (rate-limited) and retried after a back-off."""
        backoff = Backoff(first=0.5, maximum=max(self.interval, 0.5))
        quiet = RateLimitedLog(logger, interval=60.0)
        while True:
            try:
                await self.poll()
            except BusError as exc:
                quiet.warning("poll", "reading the streams' state from JetStream failed: %s", exc)
                await asyncio.sleep(backoff.next())
                continue
            quiet.clear("poll")
            backoff.reset()
            await asyncio.sleep(self.interval)
