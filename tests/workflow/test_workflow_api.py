"""The HTTP API and the commands of the workflow engine."""

from __future__ import annotations

import json

import msgspec

from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import encode_event, new_event
from nexus.services.workflow.settings import BUNDLED_DIR

SCHEMA_YAML = b"""
id: person_v1
type: input
definition:
  type: object
  required: [name, age]
  properties:
    name: {type: string, minLength: 1}
    age: {type: integer, minimum: 0}
    email: {type: string, format: email}
"""

WORKFLOW_YAML = b"""
id: greet
input_schema_id: person_v1
steps:
  - id: hello
    service: stub
    endpoint: /echo
    input_map:
      greeting: "Hello {$.input.name}"
"""


async def test_yaml_registration_input_validation_and_results(workflow_service, stub):
    svc = await workflow_service()
    code, schema = await svc.post("/schemas", data=SCHEMA_YAML)
    assert code == 201 and schema["id"] == "person_v1"
    code, workflow = await svc.post("/workflows", data=WORKFLOW_YAML)
    assert code == 201 and workflow["version"] == 1
    # Bad input: 400 naming every field at fault; nothing is started.
    code, body = await svc.post("/executions", {"workflow_id": "greet", "input": {"name": "", "age": -1}})
    assert code == 400 and body["error"] == "invalid_input"
    paths = {p["path"] for p in body["problems"]}
    assert paths == {"$.input.name", "$.input.age"}
    assert svc.ctx.engine.list() == []
    code, body = await svc.post("/executions", {"workflow_id": "greet", "input": {"age": 3}})
    assert code == 400 and body["problems"] == [{"path": "$.input.name", "message": "is required"}]
    # Bad bodies name the field too.
    code, body = await svc.post("/executions", {"workflow_id": "greet", "input": {}, "priority": 101})
    assert code == 400 and body["problems"][0]["path"] == "$.priority"
    code, body = await svc.post("/executions", {"workflow_id": "greet", "input": {}, "colour": "red"})
    assert code == 400 and "colour" in body["message"]
    code, body = await svc.post("/executions", {"input": {}})
    assert code == 400 and body["problems"][0]["path"] == "$.workflow_id"
    code, body = await svc.post("/executions", {"workflow_id": "nope", "input": {}})
    assert code == 404 and "nope" in body["message"]
    # Good input runs; the state shows outputs and timings.
    code, body = await svc.post("/executions", {"workflow_id": "greet", "input": {"name": "Ada", "age": 36}})
    assert code == 202
    await svc.wait_final(body["id"])
    code, state = await svc.get(f"/executions/{body['id']}")
    assert code == 200 and state["status"] == "COMPLETED"
    assert state["output"] == {"echo": {"greeting": "Hello Ada"}}
    assert state["steps"]["hello"]["status"] == "completed" and state["timings"]["duration_ms"] > 0


async def test_bad_definitions_answer_400_with_every_problem(workflow_service):
    svc = await workflow_service()
    code, body = await svc.post(
        "/workflows",
        {"id": "bad", "steps": [{"id": "a", "service": "nowhere", "endpoint": "/x", "condition": "$.a =="}]},
    )
    assert code == 400 and body["error"] == "invalid_definition"
    assert [p["path"] for p in body["problems"]] == ["$.steps[0].service", "$.steps[0].condition"]
    code, body = await svc.post("/workflows", data=b"id: [unclosed")
    assert code == 400 and body["problems"][0]["path"] == "$"
    code, body = await svc.post("/schemas", {"id": "s", "definition": {"type": 5}})
    assert code == 400 and body["problems"][0]["path"] == "$.definition.type"


async def test_idempotency_key_returns_the_same_execution(workflow_service, stub):
    svc = await workflow_service()
    await svc.post("/workflows", {"id": "once", "steps": [{"id": "a", "service": "stub", "endpoint": "/effect"}]})
    request = {"workflow_id": "once", "input": {}, "idempotency_key": "order-17"}
    first = (await svc.post("/executions", request))[1]["id"]
    second = (await svc.post("/executions", request))[1]["id"]
    assert first == second
    other = (await svc.post("/executions", {**request, "idempotency_key": "order-18"}))[1]["id"]
    assert other != first
    await svc.wait_final(first)
    await svc.wait_final(other)
    assert len(svc.ctx.engine.list()) == 2 and len(stub.effects) == 2


async def test_list_filters_and_pages(workflow_service, stub):
    svc = await workflow_service()
    await svc.post("/workflows", {"id": "ok", "steps": [{"id": "a", "service": "stub", "endpoint": "/effect"}]})
    await svc.post("/workflows", {"id": "bad", "steps": [{"id": "a", "service": "stub", "endpoint": "/status/400"}]})
    ids = [(await svc.post("/executions", {"workflow_id": "ok", "input": {"n": n}}))[1]["id"] for n in range(5)]
    bad = (await svc.post("/executions", {"workflow_id": "bad", "input": {}}))[1]["id"]
    for execution_id in [*ids, bad]:
        await svc.wait_final(execution_id)
    code, body = await svc.get("/executions?status=COMPLETED&limit=2&offset=1")
    assert code == 200 and [e["id"] for e in body["executions"]] == [ids[3], ids[2]]
    assert body["total"] == 5
    # The list is an Atlas view: one summary per execution, indexed by status and workflow.
    assert svc.ctx.views.executions.count({"status": "FAILED"}) == 1
    code, body = await svc.get("/executions?status=failed")
    assert [e["id"] for e in body["executions"]] == [bad]
    code, body = await svc.get("/executions?workflow_id=ok&limit=100")
    assert len(body["executions"]) == 5
    code, body = await svc.get("/executions?status=SLEEPING")
    assert code == 400 and "SLEEPING" in body["message"]
    code, body = await svc.get("/executions?limit=0")
    assert code == 400 and "limit" in body["message"]
    code, body = await svc.get("/executions/00000000-0000-0000-0000-000000000000")
    assert code == 404
    code, body = await svc.post("/executions/00000000-0000-0000-0000-000000000000/cancel")
    assert code == 404


async def test_stream_sends_each_transition_until_final(workflow_service, stub):
    svc = await workflow_service()
    await svc.post(
        "/workflows",
        {"id": "sse", "steps": [{"id": f"s{i}", "service": "stub", "endpoint": "/slow/30"} for i in range(3)]},
    )
    _, body = await svc.post("/executions", {"workflow_id": "sse", "input": {}})
    events = []
    async with svc.http.get(f"{svc.url}/executions/{body['id']}/stream") as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            text = line.decode().strip()
            if text.startswith("event:"):
                kind = text.split(":", 1)[1].strip()
            if text.startswith("data:"):
                events.append((kind, json.loads(text[5:])))
    assert events[-1][0] == "final" and events[-1][1]["status"] == "COMPLETED"
    versions = [e[1]["version"] for e in events]
    assert versions == sorted(set(versions)) and len(events) >= 3


async def test_openapi_lists_the_engine_routes(workflow_service):
    svc = await workflow_service()
    _, doc = await svc.get("/openapi.json")
    for path in (
        "/workflows",
        "/schemas",
        "/executions",
        "/executions/{execution_id}",
        "/executions/{execution_id}/events",
        "/executions/{execution_id}/cancel",
        "/executions/{execution_id}/stream",
        "/queue/stats",
    ):
        assert path in doc["paths"], path


async def test_register_and_start_commands(workflow_service, stub, until):
    svc = await workflow_service()
    bus = svc.service.bus
    workflow = {"id": "by_command", "steps": [{"id": "a", "service": "stub", "endpoint": "/effect"}]}
    register = new_event("nexus.workflow.command.register", {"kind": "workflow", "document": workflow}, source="test")
    await bus.publish("nexus.cmd.workflow.register", encode_event(register), msg_id=register.id)
    await until(lambda: svc.ctx.registry.get_workflow("by_command") is not None)
    start = new_event(
        "nexus.workflow.command.start", {"workflow_id": "by_command", "input": {}, "priority": 70}, source="t"
    )
    await bus.publish("nexus.cmd.workflow.start", encode_event(start), msg_id=start.id)
    # Redelivered or repeated, the same command starts one execution (its id is the idempotency key).
    await bus.publish("nexus.cmd.workflow.start", encode_event(start))
    await until(lambda: len(stub.effects) == 1)
    states = svc.ctx.engine.list()
    assert len(states) == 1 and states[0].priority == 70 and states[0].idempotency_key == start.id
    await bus.publish(
        "nexus.cmd.workflow.start",
        msgspec.json.encode({"workflow_id": "by_command", "input": {}, "idempotency_key": "bare"}),
    )
    await until(lambda: len(stub.effects) == 2)


async def test_bundled_definitions_register_once(workflow_service, tmp_path):
    log = MemoryEventLog()
    first = await workflow_service(log, NEXUS_WORKFLOW_BUNDLED=str(BUNDLED_DIR))
    _, body = await first.get("/workflows")
    assert {w["id"] for w in body["workflows"]} == {
        "blob_processing_workflow",
        "book_chapter_expansion",
        "kam_comprehensive_report",
        "kam_quick_brief",
        "kam_structured_content",
        "text_expansion",
    }
    await first.ctx.engine.stop_processing()
    # A second start (a restart or another replica) finds them unchanged and adds no version.
    second = await workflow_service(log, NEXUS_WORKFLOW_BUNDLED=str(BUNDLED_DIR))
    _, body = await second.get("/workflows/blob_processing_workflow")
    assert body["version"] == 1 and body["versions"] == 1
    code, body = await second.post(
        "/executions", {"workflow_id": "blob_processing_workflow", "input": {"blob_id": "x"}}
    )
    assert code == 400 and {p["path"] for p in body["problems"]} >= {"$.input.blob_id", "$.input.user_id"}


async def test_a_stream_outlives_its_keep_alive_and_resumes_after_last_event_id(workflow_service, stub):
    # A keep-alive shorter than a step: the stream must stay on the execution, not end early.
    svc = await workflow_service(NEXUS_JOB_SSE_KEEPALIVE="0.1")
    await svc.post("/workflows", {"id": "quiet", "steps": [{"id": "s", "service": "stub", "endpoint": "/slow/600"}]})
    _, body = await svc.post("/executions", {"workflow_id": "quiet", "input": {}})
    url = f"{svc.url}/executions/{body['id']}/stream"
    seen: list[tuple[str, int]] = []
    keepalives = 0
    async with svc.http.get(url) as response:
        async for line in response.content:
            text = line.decode().strip()
            if text.startswith(":"):
                keepalives += 1
            elif text.startswith("event:"):
                kind = text.split(":", 1)[1].strip()
            elif text.startswith("data:"):
                seen.append((kind, json.loads(text[5:])["version"]))
    assert seen[-1][0] == "final" and keepalives >= 2, (seen, keepalives)
    # A client reconnecting with the id of a state it saw gets only what came after it.
    last_but_one = seen[-2][1]
    async with svc.http.get(url, headers={"Last-Event-ID": str(last_but_one)}) as response:
        replayed = [json.loads(line[5:])["version"] async for line in response.content if line.startswith(b"data:")]
    assert replayed == [seen[-1][1]]
