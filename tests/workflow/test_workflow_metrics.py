"""The workflow service's metrics: step time by the service called, retries, executions ended by
outcome (counted once, by the replica that appended), and the queue by priority read from the view."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from nexus.obs import render_metrics


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render_metrics()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_retried_step_is_timed_counted_and_its_execution_counted_once_when_it_ends(
    workflow_service, stub, until
):
    svc = await workflow_service()
    ok = {"target_service": "stub", "type": "api_call", "outcome": "ok"}
    error = {**ok, "outcome": "error"}
    before = {
        "ok": _value("nexus_workflow_step_duration_seconds_count", ok),
        "error": _value("nexus_workflow_step_duration_seconds_count", error),
        "retries": _value("nexus_workflow_step_retries_total", {"target_service": "stub", "type": "api_call"}),
        "completed": _value("nexus_workflow_executions_ended_total", {"outcome": "completed"}),
        "failed": _value("nexus_workflow_executions_ended_total", {"outcome": "failed"}),
    }
    # One step that fails once (503, retryable) and then succeeds; one that fails for good.
    flaky = {
        "id": "flaky",
        "steps": [
            {"id": "a", "service": "stub", "endpoint": "/flaky/1", "retry": {"max_attempts": 2, "backoff_ms": 1}}
        ],
    }
    broken = {"id": "broken", "steps": [{"id": "b", "service": "stub", "endpoint": "/status/400"}]}
    for definition in (flaky, broken):
        code, body = await svc.post("/workflows", definition)
        assert code == 201, body
    _, first = await svc.post("/executions", {"workflow_id": "flaky", "input": {}})
    _, second = await svc.post("/executions", {"workflow_id": "broken", "input": {}})
    assert (await svc.wait_final(first["id"])).status == "COMPLETED"
    assert (await svc.wait_final(second["id"])).status == "FAILED"

    assert _value("nexus_workflow_step_duration_seconds_count", ok) == before["ok"] + 1
    assert _value("nexus_workflow_step_duration_seconds_count", error) == before["error"] + 2
    assert _value("nexus_workflow_step_retries_total", {"target_service": "stub", "type": "api_call"}) == (
        before["retries"] + 1
    )
    assert _value("nexus_workflow_executions_ended_total", {"outcome": "completed"}) == before["completed"] + 1
    assert _value("nexus_workflow_executions_ended_total", {"outcome": "failed"}) == before["failed"] + 1
    # Executions by status, read from the view (every known status has a series).
    samples = _scrape()
    assert samples[("nexus_workflow_executions", (("status", "COMPLETED"),))] >= 1
    assert samples[("nexus_workflow_executions", (("status", "FAILED"),))] >= 1
    assert ("nexus_workflow_executions", (("status", "TIMED_OUT"),)) in samples


async def test_the_queue_by_priority_and_its_oldest_age_are_read_from_the_view(workflow_service, stub, until):
    svc = await workflow_service(NEXUS_WORKFLOW_CONCURRENCY="1")
    hold = {"id": "held", "steps": [{"id": "hold", "service": "stub", "endpoint": "/hold"}]}
    await svc.post("/workflows", hold)
    _, blocker = await svc.post("/executions", {"workflow_id": "held", "input": {}})
    await until(lambda: stub.requests[f"{blocker['id']}:hold"] == 1)
    # Three wait behind the one running: two at priority 90, one at 10.
    for priority in (90, 10, 90):
        code, _ = await svc.post("/executions", {"workflow_id": "held", "input": {}, "priority": priority})
        assert code == 202
    samples = _scrape()
    assert samples[("nexus_workflow_queue_depth", (("priority", "90"),))] == 2
    assert samples[("nexus_workflow_queue_depth", (("priority", "10"),))] == 1
    assert samples[("nexus_workflow_queue_oldest_age_seconds", ())] >= 0
    assert samples[("nexus_workflow_executions", (("status", "QUEUED"),))] == 3
    stub.release.set()
    await until(lambda: ("nexus_workflow_queue_depth", (("priority", "90"),)) not in _scrape())
    assert _scrape()[("nexus_workflow_queue_oldest_age_seconds", ())] == 0

    # A replica that stops no longer reports its view.
    await svc.service.stop()
    assert ("nexus_workflow_queue_oldest_age_seconds", ()) not in _scrape()
