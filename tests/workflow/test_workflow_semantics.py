"""Semantics of executions, table-driven, against a real stub HTTP service."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.proto import new_event


def step(step_id: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "service": "stub", "endpoint": endpoint, **extra}


FAST = {"backoff_ms": 5, "jitter": 0}

CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], str, dict[str, str], dict[str, int]]] = [
    # (name, steps, workflow extras, final status, step statuses, requests per key suffix)
    (
        "three steps complete",
        [step("a", "/effect"), step("b", "/effect"), step("c", "/effect")],
        {},
        "COMPLETED",
        {"a": "completed", "b": "completed", "c": "completed"},
        {"a": 1, "b": 1, "c": 1},
    ),
    (
        "503 is retried until it succeeds",
        [step("a", "/flaky/2", retry={"max_attempts": 3, **FAST})],
        {},
        "COMPLETED",
        {"a": "completed"},
        {"a": 3},
    ),
    (
        "retries give up after max_attempts",
        [step("a", "/flaky/5", retry={"max_attempts": 2, **FAST})],
        {},
        "FAILED",
        {"a": "failed"},
        {"a": 2},
    ),
    (
        "429 is retried",
        [step("a", "/status/429", retry={"max_attempts": 3, **FAST})],
        {},
        "FAILED",
        {"a": "failed"},
        {"a": 3},
    ),
    (
        "a 4xx other than 429 fails at once",
        [step("a", "/status/404", retry={"max_attempts": 5, **FAST}), step("b", "/effect")],
        {},
        "FAILED",
        {"a": "failed"},
        {"a": 1, "b": 0},
    ),
    (
        "timeout_seconds bounds each attempt, and a timeout is retried",
        [step("a", "/slow/400", timeout_seconds=0.05, retry={"max_attempts": 2, **FAST})],
        {},
        "FAILED",
        {"a": "failed"},
        {"a": 2},
    ),
    (
        "a false condition skips the step",
        [step("a", "/effect"), step("b", "/effect", condition="$.steps.a.output.n > 100"), step("c", "/effect")],
        {},
        "COMPLETED",
        {"a": "completed", "b": "skipped", "c": "completed"},
        {"a": 1, "b": 0, "c": 1},
    ),
    (
        "a true condition runs the step",
        [step("a", "/effect"), step("b", "/effect", condition="$.steps.a.output.n == 1 and not ($.input.x < 0)")],
        {},
        "COMPLETED",
        {"a": "completed", "b": "completed"},
        {"a": 1, "b": 1},
    ),
    (
        "on_failure continue records the failure and goes on",
        [step("a", "/status/500", on_failure="continue", retry={"max_attempts": 1}), step("b", "/effect")],
        {},
        "COMPLETED",
        {"a": "failed", "b": "completed"},
        {"a": 1, "b": 1},
    ),
    (
        "a failure compensates the completed steps in reverse order",
        [
            step("a", "/effect", compensation={"service": "stub", "endpoint": "/effect"}),
            step("b", "/effect", compensation={"service": "stub", "endpoint": "/effect"}),
            step("n", "/effect"),
            step("c", "/status/400"),
        ],
        {},
        "COMPENSATED",
        {"a": "completed", "b": "completed", "n": "completed", "c": "failed"},
        {"a": 1, "b": 1, "n": 1, "c": 1, "b:compensate": 1, "a:compensate": 1, "n:compensate": 0},
    ),
    (
        "a compensation that keeps failing ends FAILED",
        [
            step(
                "a",
                "/effect",
                compensation={"service": "stub", "endpoint": "/status/503", "retry": {"max_attempts": 2, **FAST}},
            ),
            step("c", "/status/400"),
        ],
        {},
        "FAILED",
        {"a": "completed", "c": "failed"},
        {"a": 1, "c": 1, "a:compensate": 2},
    ),
    (
        "a failure with nothing to compensate ends FAILED",
        [step("a", "/effect"), step("c", "/status/422")],
        {},
        "FAILED",
        {"a": "completed", "c": "failed"},
        {"a": 1, "c": 1},
    ),
    (
        "an output that fails the output schema ends FAILED",
        [step("a", "/effect")],
        {"output_schema_id": "strict_out"},
        "FAILED",
        {"a": "completed"},
        {"a": 1},
    ),
    (
        "the execution timeout ends TIMED_OUT and compensates",
        [
            step("a", "/effect", compensation={"service": "stub", "endpoint": "/effect"}),
            step("b", "/slow/300", timeout_seconds=5),
            step("c", "/effect"),
        ],
        {"timeout_seconds": 0.15},
        "TIMED_OUT",
        {"a": "completed", "b": "completed"},
        {"a": 1, "b": 1, "c": 0, "a:compensate": 1},
    ),
]


@pytest.mark.parametrize(
    ("name", "steps", "extra", "status", "step_statuses", "requests"), CASES, ids=[c[0] for c in CASES]
)
async def test_execution_semantics(workflow_service, stub, name, steps, extra, status, step_statuses, requests):
    svc = await workflow_service()
    # A schema the output cannot satisfy, for the output-schema case.
    code, body = await svc.post(
        "/schemas",
        {"id": "strict_out", "type": "output", "definition": {"type": "object", "required": ["never"]}},
    )
    assert code == 201, body
    code, body = await svc.post("/workflows", {"id": "wf", "steps": steps, **extra})
    assert code == 201, body
    code, body = await svc.post("/executions", {"workflow_id": "wf", "input": {"x": 1}})
    assert code == 202, body
    execution_id = body["id"]
    final = await svc.wait_final(execution_id)
    assert final.status == status, (final.status, final.error)
    for step_id, expected in step_statuses.items():
        assert final.steps[step_id].status == expected, (step_id, final.steps[step_id])
    for suffix, count in requests.items():
        assert stub.requests[f"{execution_id}:{suffix}"] == count, (suffix, dict(stub.requests))
    # Whatever was retried, each key's effect happened at most once.
    assert all(n == 1 for n in stub.effects.values())
    if status != "COMPLETED":
        assert final.error
    # The state is a fold of the history, and the history is readable over HTTP.
    code, events = await svc.get(f"/executions/{execution_id}/events")
    assert code == 200
    assert [e["streamversion"] for e in events["events"]] == list(range(1, len(events["events"]) + 1))
    assert (await svc.ctx.engine.load(execution_id)).status == status


async def test_compensations_run_in_reverse_order(workflow_service, stub):
    svc = await workflow_service()
    comp = {"service": "stub", "endpoint": "/effect"}
    steps = [step(s, "/effect", compensation=comp) for s in ("a", "b", "c")] + [step("z", "/status/409")]
    await svc.post("/workflows", {"id": "saga", "steps": steps})
    _, body = await svc.post("/executions", {"workflow_id": "saga", "input": {}})
    final = await svc.wait_final(body["id"])
    assert final.status == "COMPENSATED"
    order = [entry["key"].split(":", 1)[1] for entry in stub.log]
    assert order == ["a", "b", "c", "z", "c:compensate", "b:compensate", "a:compensate"]


async def test_requests_carry_idempotency_key_traceparent_and_mapped_input(workflow_service, stub):
    svc = await workflow_service()
    await svc.post(
        "/workflows",
        {
            "id": "maps",
            "provider_id": "book:1",
            "steps": [
                {
                    "id": "load",
                    "service": "stub",
                    "endpoint": "/blobs/{blob_id}",
                    "method": "GET",
                    "output_map": {"content": "$.content", "chapter": "$.metadata.chapter_number"},
                },
                step(
                    "use",
                    "/echo",
                    input_map={
                        "prompt": "Expand:\n{$.steps.load.output.content} (chapter {$.steps.load.output.chapter})",
                        "book": "$.provider_id",
                        "execution": "$.execution.id",
                        "tags": "$.input.tags[*]",
                        "literal": {"model": "m", "t": 0.7, "list": ["$.input.blob_id", "x"]},
                    },
                ),
            ],
        },
    )
    _, body = await svc.post("/executions", {"workflow_id": "maps", "input": {"blob_id": "chap-7", "tags": ["p", "q"]}})
    final = await svc.wait_final(body["id"])
    assert final.status == "COMPLETED", final.error
    get, post = stub.log
    assert get["path"] == "/blobs/chap-7"
    assert get["method"] == "GET" and get["key"] == f"{body['id']}:load"
    assert post["traceparent"].startswith("00-" + body["id"].replace("-", ""))
    assert post["body"] == {
        "prompt": "Expand:\ntext of chap-7 (chapter 3)",
        "book": "book:1",
        "execution": body["id"],
        "tags": ["p", "q"],
        "literal": {"model": "m", "t": 0.7, "list": ["chap-7", "x"]},
    }
    assert final.steps["load"].output == {"content": "text of chap-7", "chapter": 3}


async def test_cancel_stops_a_running_execution_and_compensates(workflow_service, stub, until):
    svc = await workflow_service()
    comp = {"service": "stub", "endpoint": "/effect"}
    await svc.post(
        "/workflows",
        {
            "id": "long",
            "steps": [
                step("a", "/effect", compensation=comp),
                step("b", "/flaky/100", retry={"max_attempts": 50, "backoff_ms": 200, "jitter": 0}),
                step("c", "/effect"),
            ],
        },
    )
    _, body = await svc.post("/executions", {"workflow_id": "long", "input": {}})
    execution_id = body["id"]
    await until(lambda: not (stub.requests[f"{execution_id}:b"] < 1))
    code, state = await svc.post(f"/executions/{execution_id}/cancel", {"reason": "user asked"})
    assert code == 202
    final = await svc.wait_final(execution_id)
    assert final.status == "CANCELLED"
    assert stub.requests[f"{execution_id}:a:compensate"] == 1
    assert stub.requests[f"{execution_id}:c"] == 0
    # Cancelling again changes nothing.
    code, state = await svc.post(f"/executions/{execution_id}/cancel")
    assert code == 202 and state["status"] == "CANCELLED"


async def test_wait_event_step_resumes_on_a_matching_event_and_times_out_otherwise(workflow_service, stub, until):
    svc = await workflow_service()
    await svc.post(
        "/workflows",
        {
            "id": "waiter",
            "steps": [
                {
                    "id": "approval",
                    "type": "wait_event",
                    "event": "nexus.ext.review.approved",
                    "match": "$.event.data.doc == $.input.doc",
                    "timeout_seconds": 5,
                },
                step("after", "/echo", input_map={"by": "$.steps.approval.output.data.by"}),
            ],
        },
    )
    await svc.post(
        "/workflows",
        {
            "id": "impatient",
            "steps": [{"id": "w", "type": "wait_event", "event": "nexus.ext.review.escalated", "timeout_seconds": 0.1}],
        },
    )
    _, body = await svc.post("/executions", {"workflow_id": "waiter", "input": {"doc": "d1"}})
    _, other = await svc.post("/executions", {"workflow_id": "impatient", "input": {}})
    log = svc.ctx.log
    await until(lambda: not (svc.ctx.engine.get(body["id"]).current_step != "approval"))
    # An event for another document does not match, nor one of another tenant (a client's
    # execution sees only its own tenant's events); the right one does.
    approved = "nexus.ext.review.approved"
    mine = "workflow-tests"
    await log.append("ext-review", [new_event(approved, {"doc": "d2", "by": "x"}, source="t", tenant=mine)])
    await log.append("ext-review", [new_event(approved, {"doc": "d1", "by": "eve"}, source="t", tenant="other")])
    await log.append("ext-review", [new_event(approved, {"doc": "d1", "by": "eve"}, source="t")])
    await log.append("ext-review", [new_event(approved, {"doc": "d1", "by": "ana"}, source="t", tenant=mine)])
    final = await svc.wait_final(body["id"])
    assert final.status == "COMPLETED"
    assert final.output == {"echo": {"by": "ana"}}
    late = await svc.wait_final(other["id"])
    assert late.status == "FAILED" and "no nexus.ext.review.escalated event matched" in late.error


async def test_task_step_sends_a_command_and_takes_the_workers_result(workflow_service, stub):
    from nexus.bus import ConsumerSpec
    from nexus.proto import decode_event

    svc = await workflow_service()
    bus = svc.service.bus
    seen: list[dict[str, Any]] = []

    async def worker(delivery):
        command = decode_event(delivery.data)
        seen.append({"headers": dict(delivery.headers), "data": command.data})
        key = command.data["idempotency_key"]
        result = new_event(
            "nexus.workflow.task.completed",
            {"idempotency_key": key, "output": {"words": len(command.data["input"]["text"].split())}},
            source="nexus/worker",
        )
        await svc.ctx.log.append(f"task-{key}", [result])

    consumer = await bus.consume(
        ConsumerSpec(name="test-worker", stream="NEXUS_CMD", filter_subjects=("nexus.cmd.counter.count",)), worker
    )
    try:
        await svc.post(
            "/workflows",
            {
                "id": "tasks",
                "steps": [
                    {
                        "id": "count",
                        "type": "task",
                        "service": "counter",
                        "command": "count",
                        "input_map": {"text": "$.input.text"},
                        "timeout_seconds": 5,
                    }
                ],
            },
        )
        _, body = await svc.post("/executions", {"workflow_id": "tasks", "input": {"text": "one two three"}})
        final = await svc.wait_final(body["id"])
    finally:
        await consumer.stop()
    assert final.status == "COMPLETED", final.error
    assert final.output == {"words": 3}
    assert seen[0]["headers"]["Idempotency-Key"] == f"{body['id']}:count"
    assert seen[0]["headers"]["traceparent"].startswith("00-")


async def test_running_executions_keep_their_version(workflow_service, stub, until):
    svc = await workflow_service()
    await svc.post("/workflows", {"id": "v", "steps": [step("hold", "/hold"), step("first", "/effect")]})
    _, body = await svc.post("/executions", {"workflow_id": "v", "input": {}})
    code, v2 = await svc.post("/workflows", {"id": "v", "steps": [step("second", "/effect")]})
    assert code == 201 and v2["version"] == 2
    await until(lambda: not (stub.requests[f"{body['id']}:hold"] < 1))
    stub.release.set()
    final = await svc.wait_final(body["id"])
    assert final.workflow_version == 1 and set(final.steps) == {"hold", "first"}
    _, newer = await svc.post("/executions", {"workflow_id": "v", "input": {}})
    final = await svc.wait_final(newer["id"])
    assert final.workflow_version == 2 and set(final.steps) == {"second"}
