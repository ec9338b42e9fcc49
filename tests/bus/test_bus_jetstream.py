"""The JetStream bus passes the bus contract on a real nats-server; plus stream management."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from bus_contract import BusContract
from nats.js.api import RetentionPolicy, StreamConfig
from opentelemetry.sdk.trace import TracerProvider

from nexus.bus import Bus, StreamConfigError
from nexus.bus.jetstream import JetStreamBus
from nexus.proto import STREAM_CMD, STREAM_EVT

pytestmark = pytest.mark.nats


class TestJetStreamBus(BusContract):
    @pytest.fixture
    async def bus(self, nats_server: str) -> AsyncIterator[Bus]:
        self.tracer_provider = TracerProvider()
        bus = await JetStreamBus.connect(nats_server, tracer_provider=self.tracer_provider)
        yield bus
        await bus.close()

    async def delete_message(self, bus: Bus, stream: str, seq: int) -> None:
        assert isinstance(bus, JetStreamBus)
        assert await bus.js.delete_msg(stream, seq)


async def test_ensure_streams_is_idempotent_and_repairs_settings(nats_server: str) -> None:
    bus = await JetStreamBus.connect(nats_server, ensure_streams=False)
    try:
        # Someone created NEXUS_EVT by hand with a short de-duplication window and fewer subjects.
        await bus.js.add_stream(StreamConfig(name=STREAM_EVT, subjects=["nexus.evt.kam.>"], duplicate_window=5))
        await bus.ensure_streams()
        await bus.ensure_streams()
        info = await bus.js.stream_info(STREAM_EVT)
        assert "nexus.evt.>" in info.config.subjects
        assert info.config.duplicate_window == 120
        cmd = await bus.js.stream_info(STREAM_CMD)
        assert cmd.config.retention in (RetentionPolicy.WORK_QUEUE, "workqueue")
    finally:
        await bus.close()


async def test_a_stream_that_cannot_be_updated_is_reported(nats_server: str) -> None:
    bus = await JetStreamBus.connect(nats_server, ensure_streams=False)
    try:
        # Work-queue retention cannot be added to an existing stream in place.
        await bus.js.add_stream(StreamConfig(name=STREAM_CMD, subjects=["nexus.cmd.>"]))
        with pytest.raises(StreamConfigError, match=r"NEXUS_CMD .*retention.*nats stream rm NEXUS_CMD"):
            await bus.ensure_streams()
    finally:
        await bus.close()
