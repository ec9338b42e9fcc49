"""Seed 002's orchestrator contract on the platform's own granulator: a pipeline's stage is a real
handshake, processing and acknowledgement, recorded in the granulator's log as the caller's."""

from __future__ import annotations

from typing import Any

from nexus.raw import key_tenant, ref_key


async def test_a_pipeline_stage_runs_the_granulators_protocol(granulator: Any, workflow_service: Any) -> None:
    svc = await workflow_service(await granulator.open_log(), modules=True, NEXUS_GRANULATOR_PORT=str(granulator.port))
    body = {
        "template": {
            "name": "outline_pipeline",
            "stages": [
                {
                    "name": "content_granulation",
                    "worker": "granulator",
                    "input": {"topic": "$.input.context.parameters.topic", "structure_type": "research_report"},
                    "validation": {"enabled": True, "level": 2, "threshold": 50.0, "max_retries": 1},
                }
            ],
        },
        "context": {"client_id": 1, "request_id": 123, "parameters": {"topic": "AI Tools Market Analysis"}},
        "resources": {"max_workers": 1, "timeout_ms": 120000},
    }
    status, started = await svc.post("/api/pipelines/execute", body)
    assert status == 202, started
    state = await svc.wait_final(started["execution_id"], timeout=20)
    assert state.status == "COMPLETED", state.error

    status, checkpoint = await svc.get(f"/api/pipelines/{started['execution_id']}/checkpoint")
    assert status == 200 and checkpoint["last_completed_stage"] == "content_granulation"
    # The structure is over 1 KB: a reference in the caller's namespace is the checkpoint's data.
    ref = checkpoint["checkpoint_data"]
    assert key_tenant(ref_key(ref)) == "workflow-tests"
    [stage] = checkpoint["stages"]
    assert stage["status"] == "completed" and stage["attempts"] == 3 and checkpoint["retry_count"] == 0

    # The granulator's record: the caller's handshake, processed once, acknowledged with that reference.
    events = await granulator.log.read_stream(f"granulation-{stage['handshake_id']}")
    types = [e.type.rsplit(".", 2)[-2] + "." + e.type.rsplit(".", 1)[-1] for e in events]
    assert types[0] == "handshake.accepted" and types[-1] == "handshake.acknowledged"
    assert types.count("granulation.completed") == 1 and events[0].tenant == "workflow-tests"
    assert events[-1].data["output_ref"] == ref and events[-1].data["status"] == "completed"
    validation = state.steps["content_granulation__process"].output["validation"]
    assert {"accuracy_percentage", "questions_asked", "passed", "ai_feedback"} <= set(validation)
