"""An execution's spans: one trace from what started it, an attempt span per try, retries and
compensation visible, the origin restored from the log (what a restarted replica does).

The driver's tracer is replaced by one that records to memory (the process's global provider is
left alone: other tests rely on there being none). The execution is started inside a span of
that provider, as the HTTP middleware or a consumer would start it.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nexus.services.workflow.driver as driver_module
from nexus.services.workflow.driver import Driver
from nexus.services.workflow.handlers import fold, stream_id


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(driver_module, "_tracer", provider.get_tracer("test"))
    return provider, exporter


def _step(step_id: str, endpoint: str, **more: Any) -> dict[str, Any]:
    return {"id": step_id, "service": "stub", "endpoint": endpoint, "method": "POST", **more}


async def test_attempts_retries_and_compensation_are_spans_of_the_execution_trace(workflow_service, stub, spans):
    provider, exporter = spans
    svc = await workflow_service()
    status, _ = await svc.post(
        "/workflows",
        {
            "id": "traced",
            "steps": [
                _step("book", "/effect", compensation={"service": "stub", "endpoint": "/effect", "method": "POST"}),
                _step("flaky", "/flaky/1", retry={"max_attempts": 3, "backoff_ms": 10}),
                _step("refused", "/status/400"),
            ],
        },
    )
    assert status == 201
    engine = svc.ctx.engine
    with provider.get_tracer("test").start_as_current_span("request") as request:
        execution_id = await engine.start("traced", {}, tenant="workflow-tests")
    final = await svc.wait_final(execution_id)
    assert final.status == "COMPENSATED", final.error
    trace_id = request.get_span_context().trace_id
    request_id = request.get_span_context().span_id

    finished: list[ReadableSpan] = list(exporter.get_finished_spans())
    assert {s.context.trace_id for s in finished} == {trace_id}
    attempts = [s for s in finished if s.name.startswith(("step ", "compensate "))]
    summary = [
        (s.name, s.attributes["nexus.workflow.attempt"], s.attributes["nexus.workflow.outcome"]) for s in attempts
    ]
    assert summary == [
        ("step book", 1, "completed"),
        ("step flaky", 1, "retrying"),
        ("step flaky", 2, "completed"),
        ("step refused", 1, "failed"),
        ("compensate book", 1, "completed"),
    ]
    for span in attempts:
        # Each attempt hangs from what started the execution, and names what it called.
        assert span.parent is not None and span.parent.span_id == request_id
        assert span.attributes["nexus.workflow.id"] == "traced"
        assert span.attributes["nexus.workflow.service"] == "stub"
        assert span.attributes["nexus.execution.id"] == execution_id
    [retrying] = [s for s in attempts if s.attributes["nexus.workflow.outcome"] == "retrying"]
    assert [e.name for e in retrying.events] == ["retry scheduled"]
    assert any(s.name == "sleep" for s in finished)  # the back-off wait
    [compensation] = [s for s in finished if s.name == "compensation"]
    assert compensation.attributes["nexus.workflow.steps"] == ("book",)

    # The callee got each attempt's own context: its server span would be the attempt's child.
    sent = {entry["traceparent"].rsplit("-", 1)[0] for entry in stub.log}
    assert {f"00-{trace_id:032x}-{s.context.span_id:016x}" for s in attempts} == sent

    # What a replica restarted on the same log drives the execution in: the same trace.
    state = fold(await svc.service.log.read_stream(stream_id(execution_id)))
    assert state is not None and state.traceparent is not None
    assert state.traceparent.startswith(f"00-{trace_id:032x}-{request_id:016x}-")
    origin = Driver(engine, state).origin
    assert origin is not None
    restored = trace.get_current_span(origin).get_span_context()
    assert (restored.trace_id, restored.span_id) == (trace_id, request_id)


async def test_an_execution_started_outside_any_span_takes_the_trace_its_append_was_given(
    workflow_service, stub, spans, monkeypatch
):
    provider, exporter = spans
    svc = await workflow_service()
    # The log's append spans are recorded (the service's own provider records nothing in tests).
    monkeypatch.setattr(svc.service.log, "_tracer", provider.get_tracer("log"))
    status, _ = await svc.post("/workflows", {"id": "plain", "steps": [_step("one", "/echo")]})
    assert status == 201
    engine = svc.ctx.engine
    execution_id = await engine.start("plain", {}, tenant="workflow-tests")
    final = await svc.wait_final(execution_id)
    assert final.status == "COMPLETED", final.error
    # The view holds what a replay of the log folds (nexus replay --verify compares them)...
    folded = fold(await svc.service.log.read_stream(stream_id(execution_id)))
    assert folded is not None and folded.traceparent is not None
    assert engine.get(execution_id).traceparent == folded.traceparent
    # ...and that trace is the first append's.
    appends = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "append" and s.attributes["nexus.stream_id"] == stream_id(execution_id)
    ]
    first = min(appends, key=lambda s: s.start_time or 0)
    assert folded.traceparent.startswith(f"00-{first.context.trace_id:032x}-{first.context.span_id:016x}-")
