"""The JetStream bus passes the bus contract on a real nats-server; plus stream management."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.js.api import RetentionPolicy, StreamConfig
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nexus.bus import Bus, ConsumerSpec, Delivery, StreamConfigError
from nexus.bus.jetstream import JetStreamBus
from nexus.proto import STREAM_CMD, STREAM_EVT
from nexus.testing import BusContract

pytestmark = pytest.mark.nats


class TestJetStreamBus(BusContract):
    """The contract on both paths: nats-py's public API, and the accelerator (``_wire``)."""

    @pytest.fixture(params=["accelerated", "public"])
    async def bus(self, nats_server: str, request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
        self.tracer_provider = TracerProvider()
        accelerated = request.param == "accelerated"
        bus = await JetStreamBus.connect(
            nats_server, tracer_provider=self.tracer_provider, accelerator="on" if accelerated else "off"
        )
        assert bus.accelerated is accelerated
        yield bus
        await bus.close()


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


async def test_spans_nobody_receives_are_not_built_but_their_ids_still_continue_the_trace(nats_server: str) -> None:
    provider = TracerProvider()  # no span processor: what NEXUS_OTEL_EXPORTER=none installs
    bus = await JetStreamBus.connect(nats_server, tracer_provider=provider)
    seen: asyncio.Queue[tuple[bool, trace.SpanContext]] = asyncio.Queue()

    async def handler(delivery: Delivery) -> None:
        span = trace.get_current_span()
        seen.put_nowait((span.is_recording(), span.get_span_context()))

    try:
        await bus.consume(ConsumerSpec("ids-only", STREAM_EVT, ("nexus.evt.test.>",)), handler)
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        await bus.publish("nexus.evt.test.thing.traced", b"x", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
        recording, context = await asyncio.wait_for(seen.get(), 10)
        assert not recording
        assert f"{context.trace_id:032x}" == trace_id
        assert context.is_valid and f"{context.span_id:016x}" != parent_id
        # Without a trace to continue, the handler still runs in a trace of its own.
        await bus.publish("nexus.evt.test.thing.untraced", b"x")
        recording, context = await asyncio.wait_for(seen.get(), 10)
        assert not recording and context.is_valid
        # Once something receives spans (a processor added later), they are built again.
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        await bus.publish("nexus.evt.test.thing.traced", b"x")
        recording, context = await asyncio.wait_for(seen.get(), 10)
        assert recording
        for _ in range(100):
            if any(s.name == "consume" for s in exporter.get_finished_spans()):
                break
            await asyncio.sleep(0.01)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert spans["consume"].context.span_id == context.span_id
        assert spans["consume"].parent is not None
        assert spans["consume"].parent.span_id == spans["publish"].context.span_id
    finally:
        await bus.close()
