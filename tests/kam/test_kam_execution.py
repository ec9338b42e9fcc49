"""KAM executes a request's template on the workflow service and learns from the log how it ended.

KAM and the workflow service run in one process on a shared log, bus and Raw; the templates'
workflows call a stub service. Covered: the execution is the client's (KAM only its initiator),
completion records deliverables, metrics and ledger entries exactly once (a duplicate end event,
two replicas racing, a restart, a failure half-way), the failure path and a new attempt, 503 when
the workflow service does not answer, the orchestrator's completion route, and the deliverables'
content streamed to their owner only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from factory_harness import ALPHA, BETA, COST, DRAFT_TEXT, FINAL_TOKENS, Factory, factory, template, until

import nexus.services.kam.execution as execution
import nexus.services.kam.outcomes as outcomes
from nexus.eventlog import EventLogUnavailableError
from nexus.proto import new_event
from nexus.raw import RawQuotaError
from nexus.services.kam.context import KamContext
from nexus.services.kam.state import COST_RECORDED, request_stream


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Factory]:
    async for built in factory(tmp_path):
        yield built


def ledger_of(platform: Factory, request_id: str, index: int = 0) -> list[Any]:
    return [e for e in platform.ctx(index).state.ledger if e.request_id == request_id]


async def types_in(platform: Factory, stream: str) -> list[str]:
    return [e.type.removeprefix("nexus.kam.") for e in await platform.log.read_stream(stream)]


async def test_execute_runs_the_template_for_the_client_and_records_the_outcome(platform: Factory) -> None:
    # The output names two references: one in alpha's namespace, one in beta's (never alpha's deliverable).
    await platform.raw.store("t/alpha/uploads/chart.png", b"\x89PNG chart", "image/png")
    await platform.raw.store("t/beta/secret.txt", b"beta's secret", "text/plain")
    platform.stub.attachments = ["raw://t/alpha/uploads/chart.png", "raw://t/beta/secret.txt"]
    request_id = await platform.add_request(ALPHA, "report")

    status, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 202, started
    assert started["status"] == "executing" and started["attempt"] == 1 and started["workflow_id"] == "kam_report"
    execution_id = started["execution_id"]

    # The execution is alpha's: alpha's key reads it on the workflow service, beta's gets 404.
    status, seen = await platform.call("GET", f"/executions/{execution_id}", ALPHA, service=platform.workflow)
    assert status == 200, seen
    assert seen["input"] == {
        "template": {"id": "report", "name": "report_pipeline", "stages": [{"name": "draft"}, {"name": "final"}]},
        "context": {
            "client_id": ALPHA,
            "request_id": request_id,
            "parameters": {"depth": "detailed"},
            "request": {"title": "Tea market", "description": "", "urgency": "normal", "category": "research"},
        },
        "resources": {"max_workers": 3, "timeout_ms": 120000},
    }
    status, _ = await platform.call("GET", f"/executions/{execution_id}", BETA, service=platform.workflow)
    assert status == 404
    # KAM appears only as the initiator: the command's source, the execution's cause.
    [queued, *_] = await platform.log.read_stream(f"execution-{execution_id}")
    assert queued.tenant == ALPHA and queued.causationid
    command_cause = queued.causationid
    assert queued.data["idempotency_key"].startswith(f"kam:{request_id}:1:v")

    # The end is learnt from the log: completed, with its metrics, deliverables and costs.
    done = await platform.until_status(request_id, "completed", "failed")
    assert done.status == "completed", done.error
    assert [h["status"] for h in done.history] == ["pending", "template_assigned", "executing", "completed"]
    estimated = -(-len(DRAFT_TEXT.split()) * 4 // 3)  # words × 4/3, rounded up
    tokens = estimated + FINAL_TOKENS
    cost = round(COST["per_run"] + COST["per_1k_tokens"] * tokens / 1000 + COST["per_stage"] * 2, 6)
    assert done.metrics["stages_completed"] == 2
    assert done.metrics["tokens_used"] == tokens and done.metrics["tokens_estimated"] is True
    assert done.metrics["estimated_cost"] == pytest.approx(cost)
    assert 0 <= done.metrics["total_time_ms"] < 10_000
    entries = ledger_of(platform, request_id)
    assert sorted((e.kind, e.quantity) for e in entries) == [("run", 1.0), ("stage", 2.0), ("tokens", float(tokens))]
    assert sum(e.amount for e in entries) == pytest.approx(cost)
    assert {e.client_id for e in entries} == {ALPHA} and {e.template_id for e in entries} == {"report"}

    # The deliverables: the output, stored under alpha's prefix, and alpha's own reference only.
    status, listed = await platform.call("GET", f"/api/requests/{request_id}/deliverables", ALPHA)
    assert status == 200, listed
    output, artifact = listed["deliverables"]
    key = f"t/alpha/kam/deliverables/{request_id}/{execution_id}.json"
    assert output["storage_ref"] == f"raw://{key}" and output["type"] == "report"
    assert output["metadata"]["workflow_id"] == "kam_report" and output["metadata"]["execution_id"] == execution_id
    assert [s["storage_ref"] for s in output["metadata"]["skipped_refs"]] == ["raw://t/beta/secret.txt"]
    assert artifact["storage_ref"] == "raw://t/alpha/uploads/chart.png" and artifact["size_bytes"] == 10
    stored = json.loads(await platform.raw.retrieve(key))
    assert stored["report"] == "A report on tea." and output["size_bytes"] == len(await platform.raw.retrieve(key))

    # The content, streamed to its owner; another client gets 404, an admin the content.
    async with platform.http.get(  # type: ignore[union-attr]
        platform.url() + f"/api/kam/deliverables/{output['id']}", headers=platform.headers[ALPHA]
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert json.loads(await response.read()) == stored
    for path in (f"/api/deliverables/{output['id']}", f"/api/requests/{request_id}/deliverables"):
        status, body = await platform.call("GET", path, BETA)
        assert status == 404 and body["error"] == "not_found" and "report" not in json.dumps(body)
    status, _ = await platform.call("GET", f"/api/deliverables/{artifact['id']}", "admin")
    assert status == 200

    # A second execute of a completed request is refused; nothing new was started.
    status, refused = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 409 and "completed" in refused["message"]
    # The outcome is one append: the ledger entries, the deliverables, the completion.
    assert await types_in(platform, request_stream(request_id)) == [
        "request.created",
        "request.template_assigned",
        "request.executing",
        "cost.recorded",
        "cost.recorded",
        "cost.recorded",
        "deliverable.recorded",
        "deliverable.recorded",
        "request.completed",
    ]
    assert (await platform.log.read_stream(f"execution-{execution_id}"))[0].causationid == command_cause


async def test_execute_is_refused_clearly(platform: Factory) -> None:
    unassigned = await platform.add_request(ALPHA, None)
    assigned = await platform.add_request(ALPHA, "report")
    # Only an admin executes (a client's own request included): 403; a missing request: 404.
    status, _ = await platform.call("POST", f"/api/requests/{assigned}/execute", ALPHA, {})
    assert status == 403
    status, _ = await platform.call("POST", "/api/requests/nope/execute", "admin", {})
    assert status == 404
    # No template yet; a template that does not exist; unknown fields; a workflow that does not exist.
    status, body = await platform.call("POST", f"/api/requests/{unassigned}/execute", "admin", {})
    assert status == 409 and "no template" in body["message"]
    status, body = await platform.call("POST", f"/api/requests/{assigned}/execute", "admin", {"priority": 9})
    assert status == 400 and "priority" in body["message"]
    status, body = await platform.call(
        "POST", f"/api/requests/{assigned}/execute", "admin", {"resources": {"max_workers": 0}}
    )
    assert status == 400 and "max_workers" in body["message"]
    await platform.add_template(template("ghost", "no_such_workflow"))
    ghost = await platform.add_request(ALPHA, "ghost")
    status, body = await platform.call("POST", f"/api/requests/{ghost}/execute", "admin")
    assert status == 422 and "no_such_workflow" in body["message"]
    assert platform.ctx().state.requests[ghost].status == "template_assigned"
    # The body's resources override the template's (an empty body is no override).
    status, started = await platform.call(
        "POST", f"/api/kam/requests/{assigned}/execute", "admin", {"resources": {"timeout_ms": 60000}}
    )
    assert status == 202, started
    status, seen = await platform.call(
        "GET", f"/executions/{started['execution_id']}", ALPHA, service=platform.workflow
    )
    assert seen["input"]["resources"] == {"max_workers": 3, "timeout_ms": 60000}


async def test_without_an_answer_from_the_workflow_service_nothing_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution, "START_TIMEOUT_SECONDS", 0.3)
    async for platform in factory(tmp_path, with_workflow=False):
        request_id = await platform.add_request(ALPHA, "report")
        version = platform.ctx().state.requests[request_id].version
        status, body = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
        assert status == 503 and "nothing was recorded" in body["message"]
        assert platform.ctx().state.requests[request_id].status == "template_assigned"
        assert await platform.log.stream_version(request_stream(request_id)) == version


async def test_a_failed_run_is_recorded_with_its_costs_and_may_run_again(platform: Factory) -> None:
    await platform.add_template(template("fragile", "kam_fails"))
    request_id = await platform.add_request(ALPHA, "fragile")
    status, first = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 202, first
    failed = await platform.until_status(request_id, "failed", "completed")
    assert failed.status == "failed" and "status 400" in (failed.error or ""), failed.error
    # The costs incurred: the run and the one stage that completed (the draft's estimated tokens).
    assert failed.metrics["stages_completed"] == 1
    kinds = {e.kind: e.quantity for e in ledger_of(platform, request_id)}
    assert kinds["run"] == 1.0 and kinds["stage"] == 1.0 and kinds["tokens"] > 0
    assert not failed.deliverable_ids
    # The template is fixed (its workflow replaced); a new attempt is a new execution.
    await platform.add_template(template("fragile", "kam_report"))
    status, second = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 202, second
    assert second["attempt"] == 2 and second["execution_id"] != first["execution_id"]
    done = await platform.until_status(request_id, "completed")
    assert [h["status"] for h in done.history][-4:] == ["executing", "failed", "executing", "completed"]
    assert len({e.execution_id for e in ledger_of(platform, request_id)}) == 2


async def test_two_replicas_and_a_duplicate_end_event_record_one_outcome(platform: Factory) -> None:
    await platform.add_template(template("held", "kam_held"))
    await platform.start_kam()
    request_id = await platform.add_request(ALPHA, "held")
    status, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 202, started
    execution_id = started["execution_id"]
    # Both replicas see the execution end at the same moment and race to record it.
    platform.stub.release.set()
    for index in (0, 1):
        await platform.until_status(request_id, "completed", index=index)
    stream = request_stream(request_id)
    version = await platform.log.stream_version(stream)
    # The end event again (a redelivery, a replayed copy): nothing more is recorded.
    events = await platform.log.read_stream(f"execution-{execution_id}")
    [end] = [e for e in events if e.type == "nexus.workflow.execution.completed"]
    copy = new_event(end.type, end.data, source=end.source, tenant=end.tenant)
    [stored] = await platform.log.append(f"execution-{execution_id}", [copy])
    for index in (0, 1):
        await platform.ctx(index).caught_up(stored.position or 0)
    await asyncio.sleep(0.3)  # time for both watchers to look at the execution again
    assert await platform.log.stream_version(stream) == version
    assert (await types_in(platform, stream)).count("request.completed") == 1
    assert (await types_in(platform, stream)).count("deliverable.recorded") == 1
    ledger = [e for e in await platform.log.read_stream(stream) if e.type == COST_RECORDED]
    assert sorted(e.data["kind"] for e in ledger) == ["run", "stage", "tokens"]
    # The hold step reported usage.total_tokens, the final one tokens_used: nothing estimated.
    metrics = platform.ctx(1).state.requests[request_id].metrics
    assert metrics["tokens_used"] == 7 + FINAL_TOKENS and "tokens_estimated" not in metrics


async def test_an_execution_that_ends_while_kam_is_down_is_recorded_at_start(
    platform: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await platform.add_template(template("held", "kam_held"))
    request_id = await platform.add_request(ALPHA, "held")
    status, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 202, started
    execution_id = started["execution_id"]
    await platform.stop_kam(platform.kam)
    # KAM is down while the execution ends.
    platform.stub.release.set()

    async def ended() -> bool:
        return any(e.type.endswith("completed") for e in await platform.log.read_stream(f"execution-{execution_id}"))

    for _ in range(500):
        if await ended():
            break
        await asyncio.sleep(0.01)
    assert await ended()
    # The restarted KAM's first append of the outcome fails (nothing of it is written), then it retries.
    failures = {"left": 1}
    real_append = KamContext.append

    async def flaky_append(self: KamContext, stream: str, events: Any, expected_version: int = -1) -> Any:
        if stream == request_stream(request_id) and failures["left"]:
            failures["left"] -= 1
            raise EventLogUnavailableError("the log went away")
        return await real_append(self, stream, events, expected_version)

    monkeypatch.setattr(KamContext, "append", flaky_append)
    await platform.start_kam()
    done = await platform.until_status(request_id, "completed", timeout=15)
    assert failures["left"] == 0 and done.execution_id == execution_id
    events = await platform.log.read_stream(request_stream(request_id))
    ledger = [e for e in events if e.type == COST_RECORDED]
    assert sorted(e.data["kind"] for e in ledger) == ["run", "stage", "tokens"]


async def test_an_orchestrator_completes_an_execution_once(platform: Factory) -> None:
    await platform.add_template(template("held", "kam_held"))
    request_id = await platform.add_request(ALPHA, "held")
    status, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    execution_id = started["execution_id"]
    path = f"/api/worker-sessions/{execution_id}/complete"
    large = bytes(range(256)) * 1200  # 300 KiB: streamed in chunks
    await platform.raw.store("t/alpha/reports/final.bin", large, "application/pdf")
    body = {
        "execution_id": execution_id,
        "status": "completed",
        "deliverables": [
            {
                "type": "report",
                "storage_ref": "raw://t/alpha/reports/final.bin",
                "size_bytes": len(large),
                "metadata": {},
            }
        ],
        "metrics": {"total_time_ms": 180000, "stages_completed": 5, "tokens_used": 15000, "estimated_cost": 0.75},
    }
    # Who may call it, and what it refuses.
    status, _ = await platform.call("POST", path, ALPHA, body)
    assert status == 401  # no worker token
    platform.headers["alpha-bearer"] = {"Authorization": "Bearer " + platform.headers[ALPHA]["X-API-Key"]}
    status, _ = await platform.call("POST", path, "alpha-bearer", body)
    assert status == 403  # a client's key is not a worker's token
    status, _ = await platform.call(
        "POST", "/api/worker-sessions/not-kams/complete", "worker", {**body, "execution_id": "not-kams"}
    )
    assert status == 404
    status, refused = await platform.call("POST", path, "worker", {**body, "execution_id": "not-kams"})
    assert status == 400 and "not the path's" in refused["message"]
    elsewhere = {**body, "deliverables": [{**body["deliverables"][0], "storage_ref": "raw://t/beta/secret.txt"}]}
    status, refused = await platform.call("POST", path, "worker", elsewhere)
    assert status == 400 and "deliverables[0].storage_ref" in refused["message"]
    status, refused = await platform.call("POST", path, "worker", {**body, "extra": 1})
    assert status == 400 and "extra" in refused["message"]
    header = {**body, "deliverables": [{**body["deliverables"][0], "content_type": "text/html\nX-Evil: 1"}]}
    status, refused = await platform.call("POST", path, "worker", header)
    assert status == 400 and "content_type" in refused["message"]

    stream = request_stream(request_id)
    status, first = await platform.call("POST", path, "worker", body)
    assert status == 200, first
    assert first["status"] == "completed" and len(first["deliverable_ids"]) == 1
    cost = round(COST["per_run"] + COST["per_1k_tokens"] * 15 + COST["per_stage"] * 5, 6)
    assert first["metrics"]["estimated_cost"] == pytest.approx(cost) and first["metrics"]["reported_cost"] == 0.75
    version = await platform.log.stream_version(stream)
    ledger_size = len(platform.ctx().state.ledger)
    # The same body again (keys in another order): the same answer, nothing recorded.
    reordered = json.dumps(dict(reversed(list(body.items()))))
    status, again = await platform.call("POST", path, "worker", reordered)
    assert status == 200 and again == first
    assert await platform.log.stream_version(stream) == version
    # Another body for the same execution: 409.
    status, refused = await platform.call("POST", path, "worker", {**body, "status": "failed"})
    assert status == 409, refused
    # The workflow's own end arrives later: already recorded, nothing added.
    platform.stub.release.set()
    await until(lambda: platform.stub.calls.count("final") == 1, "the held execution's last step")
    await platform.ctx().caught_up(await platform.log.head())
    assert await platform.log.stream_version(stream) == version
    assert len(platform.ctx().state.ledger) == ledger_size

    # The large deliverable streams to its owner in chunks, byte for byte.
    [deliverable_id] = first["deliverable_ids"]
    async with platform.http.get(  # type: ignore[union-attr]
        platform.url() + f"/api/deliverables/{deliverable_id}", headers=platform.headers[ALPHA]
    ) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "application/pdf"
        chunks = [chunk async for chunk in response.content.iter_any()]
        assert b"".join(chunks) == large
    status, _ = await platform.call("GET", f"/api/deliverables/{deliverable_id}", BETA)
    assert status == 404


def test_tokens_are_read_from_the_outputs_or_estimated() -> None:
    assert outcomes.tokens_of({"tokens_used": 12, "text": "a b c"}) == (12, False)
    assert outcomes.tokens_of({"usage": {"total_tokens": 30}}) == (30, False)
    assert outcomes.tokens_of({"text": "one two three", "word_count": 300}) == (400, True)
    assert outcomes.tokens_of({"text": "one two three", "ref": "raw://t/a/x"}) == (4, True)
    assert outcomes.tokens_of({"ok": True}) == (0, False)
    assert outcomes.tokens_of({"tokens_used": True, "text": "a b c"}) == (4, True)


def test_the_output_is_encoded_as_the_template_says() -> None:
    output = {"title": "T", "text": "# Tea\n"}
    assert outcomes.encode_output(output, "text/markdown") == (b"# Tea\n", "text/markdown")
    assert outcomes.encode_output(output, "application/json") == (msgspec.json.encode(output), "application/json")
    # A text type the output cannot fill falls back to JSON, saying so; so does a type that
    # could not be a header.
    assert outcomes.encode_output({"n": 1}, "text/plain") == (b'{"n":1}', "application/json")
    assert outcomes.encode_output("x", "text/plain\r\nSet-Cookie: a=b") == (b'"x"', "application/json")
    assert outcomes.valid_content_type("text/markdown; charset=utf-8")


async def test_the_openapi_document_describes_these_routes(platform: Factory) -> None:
    status, document = await platform.call("GET", "/openapi.json", ALPHA)
    assert status == 200, document
    for path in (
        "/api/requests/{request_id}/execute",
        "/api/worker-sessions/{execution_id}/complete",
        "/api/requests/{request_id}/deliverables",
        "/api/deliverables/{deliverable_id}",
        "/api/clients/{client_id}/costs",
        "/api/notifications/stream",
    ):
        assert path in document["paths"] and "/api/kam" + path.removeprefix("/api") in document["paths"], path


async def test_an_output_raw_refuses_to_keep_fails_the_request_with_its_costs(
    platform: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_store = platform.raw.store

    async def full(key: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
        if "/kam/deliverables/" in key:
            raise RawQuotaError(f"storing {len(data)} bytes would exceed the quota")
        return await real_store(key, data, content_type)

    monkeypatch.setattr(platform.raw, "store", full)
    request_id = await platform.add_request(ALPHA, "report")
    status, _ = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 202
    failed = await platform.until_status(request_id, "failed", "completed")
    assert failed.status == "failed" and "could not be stored" in (failed.error or "") and "quota" in failed.error
    assert not failed.deliverable_ids and failed.metrics["stages_completed"] == 2
    assert {e.kind for e in ledger_of(platform, request_id)} == {"run", "tokens", "stage"}


async def test_an_execution_that_ends_before_its_request_says_it_executes_is_recorded(
    platform: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = KamContext.append

    async def late_append(self: KamContext, stream: str, events: Any, expected_version: int = -1) -> Any:
        if events[0].type == "nexus.kam.request.executing":
            # Hold the transition back until the execution has ended: its end is then in the log
            # before KAM knows the execution is one of its requests'.
            stream_id = f"execution-{events[0].data['execution_id']}"
            for _ in range(1000):
                if any(e.type.endswith(".completed") for e in await platform.log.read_stream(stream_id)):
                    break
                await asyncio.sleep(0.01)
        return await real_append(self, stream, events, expected_version)

    monkeypatch.setattr(KamContext, "append", late_append)
    request_id = await platform.add_request(ALPHA, "report")
    status, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 202, started
    positions = {e.type: e.position for e in await platform.log.read_all(1)}
    assert positions["nexus.workflow.execution.completed"] < positions["nexus.kam.request.executing"]
    done = await platform.until_status(request_id, "completed", "failed")
    assert done.status == "completed" and done.execution_id == started["execution_id"]
