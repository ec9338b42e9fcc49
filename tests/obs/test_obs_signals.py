"""Append metrics and spans, JSON log lines with trace ids, secrets never logged."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from nexus.config import ConfigError
from nexus.eventlog import ConcurrencyError
from nexus.eventlog.memory import MemoryEventLog
from nexus.obs import (
    REDACTED,
    InstrumentedEventLog,
    current_traceparent,
    parent_context,
    setup_logging,
    setup_tracing,
)
from nexus.proto import new_event


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_appends_are_counted_timed_and_traced(memory_log: MemoryEventLog) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    log = InstrumentedEventLog(memory_log, provider.get_tracer("test"))
    before_events = _value("nexus_events_appended_total")
    before_ok = _value("nexus_event_log_appends_total", {"outcome": "ok"})
    before_conflict = _value("nexus_event_log_appends_total", {"outcome": "conflict"})
    before_timed = _value("nexus_event_log_append_duration_seconds_count")

    events = [new_event("nexus.test.thing.happened", {"n": i}, source="test") for i in range(3)]
    stored = await log.append("thing-1", events)
    assert [e.streamversion for e in stored] == [1, 2, 3]
    with pytest.raises(ConcurrencyError):
        await log.append("thing-1", [new_event("nexus.test.thing.happened", {}, source="test")], expected_version=1)

    assert _value("nexus_events_appended_total") == before_events + 3
    assert _value("nexus_event_log_appends_total", {"outcome": "ok"}) == before_ok + 1
    assert _value("nexus_event_log_appends_total", {"outcome": "conflict"}) == before_conflict + 1
    assert _value("nexus_event_log_append_duration_seconds_count") == before_timed + 2
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["append", "append"]
    assert spans[0].attributes["nexus.event_count"] == 3
    assert spans[0].status.status_code.name == "UNSET"
    assert spans[1].status.status_code.name == "ERROR"
    # Reads pass through to the adapter.
    assert len(await log.read_stream("thing-1")) == 3
    assert await log.head() == 3


def test_log_lines_are_json_with_trace_ids_and_no_secrets() -> None:
    out = io.StringIO()
    handler = setup_logging("kam", "info", stream=out)
    try:
        provider = TracerProvider()
        with provider.get_tracer("test").start_as_current_span("work") as span:
            logging.getLogger("nexus.test").info(
                "calling with Authorization: Bearer abc.def password=hunter2",
                extra={"event_id": "e-1", "x-api-key": "nxk_1.secret", "headers": {"X-Session-Token": "t0k"}},
            )
        context = span.get_span_context()
    finally:
        logging.getLogger().removeHandler(handler)
    line = json.loads(out.getvalue().strip())
    assert line["service"] == "kam" and line["level"] == "info" and line["time"].endswith("Z")
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["event_id"] == "e-1"
    text = out.getvalue()
    for secret in ("abc.def", "hunter2", "nxk_1.secret", "t0k"):
        assert secret not in text
    assert line["x-api-key"] == REDACTED and line["headers"]["X-Session-Token"] == REDACTED


def test_setup_tracing_accepts_only_the_documented_exporters() -> None:
    for name in ("none", "console", "otlp"):
        setup_tracing("nexus-test", name, set_global=False).shutdown()
    with pytest.raises(ConfigError, match="NEXUS_OTEL_EXPORTER"):
        setup_tracing("nexus-test", "jaeger", set_global=False)


def test_a_recorded_traceparent_becomes_the_parent_it_names() -> None:
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("append") as span:
        recorded = current_traceparent()
    assert recorded is not None
    context = parent_context(recorded)
    assert context is not None
    restored = trace.get_current_span(context).get_span_context()
    assert (restored.trace_id, restored.span_id, restored.is_remote) == (
        span.get_span_context().trace_id,
        span.get_span_context().span_id,
        True,
    )
    assert restored.trace_flags == span.get_span_context().trace_flags
    # Absent, malformed, all-zero ids, upper-case or signed hex: no parent.
    span_part = "-" + "1" * 16 + "-01"
    for bad in (None, "", "garbage", "00-" + "0" * 32 + span_part, "00-" + "A" * 32 + span_part):
        assert parent_context(bad) is None, bad
    assert parent_context("00-+" + "1" * 31 + "-" + "1" * 16 + "-01") is None
    # A later version's form goes through the W3C propagator.
    assert parent_context("01-" + "1" * 32 + "-" + "2" * 16 + "-01-more") is not None
