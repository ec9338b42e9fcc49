"""Seed 000 end to end through the Python client, triggers from an external event, seed 001's seven phases
with live updates, against a real workflow app (aiohttp on port 0) and a real stub service behind the steps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nexus.auth import issue_key, revoke_key
from nexus.bus.memory import MemoryBus
from nexus.client import JobClient
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import new_event
from nexus.raw import open_raw
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.granulator import bootstrap as granulator_bootstrap
from nexus.services.granulator import load_settings as granulator_settings
from nexus.services.workflow import api, live
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.engine import WorkflowEngine
from nexus.services.workflow.identity import ServiceIdentity
from nexus.services.workflow.registry import WorkflowRegistry
from nexus.services.workflow.settings import load_settings
from nexus.services.workflow.view import ExecutionView

FILE = {"type": "string", "contentMediaType": "application/octet-stream"}
ANOMALY_SCHEMA = {
    "id": "anomaly_input_v1",
    "provider_id": "gaia",
    "name": "Anomaly input",
    "version": "1.0",
    "type": "input",
    "definition": {
        "type": "object",
        "required": ["title", "confidence"],
        "properties": {
            "title": {"type": "string"},
            "confidence": {"type": "number"},
            "verified": {"type": "boolean"},
            "detected_at": {"type": "string", "format": "date-time"},
            "location": {"type": "object"},
            "modalities": {"type": "array", "items": {"type": "string"}},
            "report": FILE,
            "evidence": {"type": "array", "items": FILE},
        },
    },
}
ANOMALY_WORKFLOW = {
    "id": "anomaly_review",
    "provider_id": "gaia",
    "name": "Anomaly review",
    "description": "Review a detected anomaly",
    "input_schema_id": "anomaly_input_v1",
    "active": True,
    "steps": [
        {
            "id": "analyze",
            "name": "Analyze",
            "type": "api_call",
            "service": "gaia",
            "endpoint": "/analyze",
            "method": "POST",
            "input_map": {
                "title": "$.input.title",
                "confidence": "$.input.confidence",
                "report": "$.input.report",
                "evidence": "$.input.evidence",
            },
            "timeout_seconds": 10,
            "retry": {"max_attempts": 1, "backoff_ms": 10},
        }
    ],
}


@dataclass
class Platform:
    url: str
    key: str
    log: MemoryEventLog
    stub_calls: list[dict[str, Any]]
    engine: WorkflowEngine
    service: Service


async def _stub_app(calls: list[dict[str, Any]]) -> web.Application:
    """The service behind the steps: GAIA's analysis and seed 001's integrations service."""
    failed_once: set[str] = set()
    sessions: list[aiohttp.ClientSession] = []

    async def analyze(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append({"path": request.path, "body": body, "key": request.headers.get("Idempotency-Key")})
        if body["title"] == "poison":
            return web.json_response({"error": "cannot analyze"}, status=422)
        if body["title"] == "slow":
            await asyncio.sleep(0.6)  # several of the monitor's keep-alive intervals
        sizes = []
        # The step passes file URLs: the service downloads them, no key needed.
        for url in [body.get("report"), *(body.get("evidence") or [])]:
            if url:
                async with sessions[0].get(url) as resp:
                    assert resp.status == 200
                    sizes.append(len(await resp.read()))
        return web.json_response({"verdict": "confirmed", "score": body["confidence"] * 100, "file_sizes": sizes})

    async def phase(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append({"path": request.path, "body": body, "authorization": request.headers.get("Authorization")})
        n = request.match_info["n"]
        # Phase 2's first call finds the integrations service unavailable: the platform retries.
        if n == "2" and body["user_id"] not in failed_once:
            failed_once.add(body["user_id"])
            return web.json_response({"error": "temporarily unavailable"}, status=503)
        return web.json_response({"phase": int(n), "handled": request.match_info["action"]})

    app = web.Application()
    app.router.add_post("/analyze", analyze)
    app.router.add_post("/phases/{n}/{action}", phase)

    async def client_session(_app: web.Application) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession())
        yield
        await sessions[0].close()

    app.cleanup_ctx.append(client_session)
    return app


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    calls: list[dict[str, Any]] = []
    log = MemoryEventLog()
    # The phases' own work runs on the real granulator (core), as with `make run`.
    bus = MemoryBus()
    await bus.ensure_streams()
    granulator = await granulator_bootstrap(
        granulator_settings({"NEXUS_GRANULATOR_PORT": "0", "NEXUS_DATA_DIR": str(tmp_path / "g")}),
        log=log,
        bus=bus,
        raw=MemoryRaw(),
    )
    await granulator.start()
    async with TestServer(await _stub_app(calls), host="127.0.0.1", port=0) as stub:
        stub_url = str(stub.make_url("")).rstrip("/")
        settings = load_settings(
            {
                "NEXUS_SERVICE_GAIA": stub_url,
                "NEXUS_SERVICE_INTEGRATIONS": stub_url,
                "NEXUS_GRANULATOR_PORT": str(granulator.port),
                "NEXUS_JOB_SSE_KEEPALIVE": "0.1",
            }
        )
        raw = await open_raw(f"file://{tmp_path / 'raw'}")
        registry = WorkflowRegistry(log, settings.services)
        await registry.register_schema(ANOMALY_SCHEMA)
        await registry.register_workflow(ANOMALY_WORKFLOW)
        view = ExecutionView(log)
        await view.load()
        view.start_tail()
        engine = WorkflowEngine(
            log,
            registry,
            view,
            services=settings.services,
            concurrency=64,
            platform_services=settings.platform_services,
        )
        engine.identity = await ServiceIdentity.issue(log, "jobs-tests")
        await engine.start_processing()
        ctx = WorkflowContext(
            settings=settings, log=log, bus=None, raw=raw, engine=engine, registry=registry, views=view
        )
        # The workflow service's own HTTP plumbing (auth, errors, OpenAPI) with every optional module.
        service = Service(settings, log=log, bus=bus)
        assert api.install_optional(service, ctx) == [
            "jobapi",
            "uploads",
            "anomalies",
            "triggers",
            "phases",
            "live",
            "pipelines",
        ]
        key = await issue_key(log, "client", "gaia")
        async with TestServer(service.app, host="127.0.0.1", port=0) as server:
            yield Platform(str(server.make_url("")).rstrip("/"), key.secret, log, calls, engine, service)
        await engine.stop_processing()
        await view.stop()
    await granulator.stop()  # closes the shared log


ANOMALY = {
    "id": 123,
    "title": "Seismic Activity",
    "description": "Unusual patterns",
    "severity": "high",
    "confidence": 0.95,
    "location": {"lat": 38.3, "lng": 142.4},
    "timestamp": "2025-11-19T10:00:00Z",
    "modalities": ["seismic", "environmental"],
    "verified": True,
}
MAPPING = {"detected_at": "timestamp", "metadata": "location"}


async def test_the_monitor_stays_open_through_a_step_slower_than_its_keep_alive(platform: Platform) -> None:
    # The step takes 0.6 s, the keep-alive is 0.1 s: the stream sends keep-alive comments while it
    # waits and still carries the final status (a keep-alive once cut the watch off, and the
    # client had to fall back to polling).
    async with JobClient(platform.url, platform.key, timeout=20) as client:
        outcome = await client.trigger("anomaly_review", {"title": "slow", "confidence": 0.5})
        assert outcome.success, outcome.error
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{platform.url}/job/{outcome.job_id}/monitor", headers={"x-service-key": platform.key}) as sse,
        ):
            raw = await asyncio.wait_for(sse.read(), 20)
    assert raw.count(b": keep-alive\n\n") >= 2
    frames = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith(b"data: ")]
    assert frames[-1]["status"] == "COMPLETED" and frames[-1]["results"]["verdict"] == "confirmed"


async def test_seed_000_flow_end_to_end_through_the_client(platform: Platform) -> None:
    async with JobClient(platform.url, platform.key, poll_interval=0.1, timeout=20) as client:
        # Step 1: the schema, typed per the architecture's table.
        schema = await client.get_schema("anomaly_review")
        assert {n: f.type for n, f in schema.items()} == {
            "title": "str",
            "confidence": "float",
            "verified": "bool",
            "detected_at": "date",
            "location": "object",
            "modalities": "array",
            "report": "file",
            "evidence": "array_files",
        }
        # Steps 2-6: initiate, upload the files, build the payload, execute.
        record = dict(ANOMALY, report=b"%PDF seismograph", evidence=[b"a" * 10, b"b" * 20])
        outcome = await client.trigger("anomaly_review", record, mapping={"detected_at": "timestamp"})
        assert outcome.success, outcome.error
        # Step 7: monitor over SSE until a final status.
        updates: list[dict[str, Any]] = []
        final = await client.monitor(outcome.job_id, on_update=updates.append)
        assert final["status"] == "COMPLETED"
        assert all(u["status"] in ("IN PROGRESS", "COMPLETED") for u in updates)
        # Steps 8-9: results and the audit trail from the log.
        results = await client.results(outcome.job_id)
        assert results["results"]["verdict"] == "confirmed"
        assert results["results"]["file_sizes"] == [16, 10, 20]
        audit = (await client.audit(outcome.job_id))["auditTrail"]
        types = [e["type"] for e in audit]
        assert types[0] == "nexus.workflow.job.initiated" and "nexus.workflow.job.executed" in types
        assert types[-1] == "nexus.workflow.execution.completed"
        # Polling (the fallback) reads the same final status.
        assert (await client.monitor(outcome.job_id, use_sse=False))["status"] == "COMPLETED"
        # Executing again starts nothing new.
        again = await client.execute(
            outcome.job_id, {"title": {"value": "x", "type": "str"}, "confidence": {"value": 1, "type": "float"}}
        )
        assert "already" in again["message"]
    analyzed = [c for c in platform.stub_calls if c["path"] == "/analyze"]
    assert len(analyzed) == 1 and analyzed[0]["key"].endswith(":analyze")


async def test_the_job_api_refuses_bad_payloads_unknown_jobs_and_bad_keys(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"x-service-key": platform.key}
        async with session.post(
            f"{platform.url}/job/initiate", json={"workflowId": "anomaly_review"}, headers=headers
        ) as resp:
            job_id = (await resp.json())["jobExecutionId"]
        bad = {"title": {"value": "t", "type": "str"}, "confidence": {"value": "high", "type": "float"}}
        async with session.post(
            f"{platform.url}/job/execute",
            json={"jobExecutionId": job_id, "jobPayloadSchemaInstance": bad},
            headers=headers,
        ) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body["success"] is False and "confidence" in body["error"]
            assert body["problems"][0]["field"] == "confidence"
        async with session.get(f"{platform.url}/job/{job_id}/results", headers=headers) as resp:
            assert resp.status == 409
        async with session.get(f"{platform.url}/job/nope/status", headers=headers) as resp:
            assert resp.status == 404
        async with session.get(f"{platform.url}/workflow/nope", headers=headers) as resp:
            assert resp.status == 404
        async with session.get(f"{platform.url}/workflow/anomaly_review") as resp:
            assert resp.status == 401
        # Another client's key cannot read this job: 404, the same as a job that does not exist
        # (never 403, which would tell that the id is taken); a revoked key reads nothing.
        other = await issue_key(platform.log, "client", "someone-else")
        async with session.get(f"{platform.url}/job/{job_id}/status", headers={"x-service-key": other.secret}) as resp:
            assert resp.status == 404
            assert await resp.json() == {"success": False, "error": f"no job {job_id!r}"}
        await revoke_key(platform.log, other.info.key_id)
        async with session.get(
            f"{platform.url}/workflow/anomaly_review", headers={"x-service-key": other.secret}
        ) as resp:
            assert resp.status == 401


async def test_batches_settle_every_item(platform: Platform) -> None:
    async with JobClient(platform.url, platform.key, poll_interval=0.1, timeout=20) as client:
        # Client side (seed 000's Promise.allSettled): the bad record fails alone.
        records = [dict(ANOMALY, title="one"), dict(ANOMALY, confidence="very"), dict(ANOMALY, title="three")]
        batch = await client.batch_trigger("anomaly_review", records)
        assert (batch.total, batch.successful, batch.failed) == (3, 2, 1)
        assert [r.success for r in batch.results] == [True, False, True]
        assert "confidence" in (batch.results[1].error or "")
        # Server side: POST /job/batch with an outcome per item.
        ok = {"title": {"value": "ok", "type": "str"}, "confidence": {"value": 0.5, "type": "float"}}
        poison = {"title": {"value": "poison", "type": "str"}, "confidence": {"value": 0.5, "type": "float"}}
        mistyped = {"title": {"value": 7, "type": "str"}, "confidence": {"value": 0.5, "type": "float"}}
        body = await client.execute_batch(
            "anomaly_review",
            [
                {"title": "a", "jobPayloadSchemaInstance": ok},
                {"jobPayloadSchemaInstance": mistyped},
                {"jobPayloadSchemaInstance": poison},
                "not an object",
            ],
        )
        assert (body["total"], body["successful"], body["failed"]) == (4, 2, 2)
        assert [r["success"] for r in body["results"]] == [True, False, True, False]
        assert "title" in body["results"][1]["error"]
        # The step that the service refuses with a 422 makes its job FAILED.
        failed = await client.monitor(body["results"][2]["jobId"])
        assert failed["status"] == "FAILED"
        assert (await client.monitor(body["results"][0]["jobId"]))["status"] == "COMPLETED"


async def _wait_for(predicate: Any, seconds: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_an_external_anomaly_event_starts_a_job_through_a_trigger(platform: Platform) -> None:
    headers = {"x-service-key": platform.key}
    trigger_yaml = """
id: gaia_anomaly
event_type: ext.gaia.anomaly_detected
condition: $.data.severity == 'high' and $.data.confidence >= 0.9
workflow_id: anomaly_review
input_map:
  title: $.data.title
  confidence: $.data.confidence
  modalities: $.data.modalities
"""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{platform.url}/triggers", data=trigger_yaml, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
        async with session.post(
            f"{platform.url}/triggers", data="id: x\nevent_type: a\ncondition: '$.a =='", headers=headers
        ) as resp:
            assert resp.status == 400
            paths = {p["path"] for p in (await resp.json())["problems"]}
            assert {"$.workflow_id", "$.condition"} <= paths

    # External events as the ingest stores them (stream ext-<source>, the subject's event token
    # kept), ingested for the tenant gaia; the same event ingested for no tenant or for another
    # client is not gaia's to react to.
    def external(data: dict[str, Any], tenant: str | None = "gaia") -> Any:
        event = new_event("com.gaia.anomaly", data, source="https://gaia.example/detector", tenant=tenant)
        return msgspec.structs.replace(event, extevent="anomaly_detected")

    high = external({"title": "Quake", "severity": "high", "confidence": 0.97, "modalities": ["seismic"]})
    low = external({"title": "Tremor", "severity": "low", "confidence": 0.97, "modalities": []})
    unowned = external({"title": "Slide", "severity": "high", "confidence": 0.99, "modalities": []}, None)
    foreign = external({"title": "Flood", "severity": "high", "confidence": 0.99, "modalities": []}, "acme")
    await platform.log.append("ext-gaia", [unowned, foreign, high, low])
    # Delivered twice (a redelivery): still one start.
    await platform.log.append("ext-gaia", [high])

    async def started() -> list[Any]:
        return [s for s in platform.engine.list(workflow_id="anomaly_review") if s.status == "COMPLETED"]

    [state] = await _wait_for(started)
    assert state.input == {"title": "Quake", "confidence": 0.97, "modalities": ["seismic"]}
    assert state.idempotency_key == high.id and state.tenant == "gaia"
    fired = await platform.log.read_stream(f"trigger-gaia.gaia_anomaly-{high.id}")
    assert [e.data["execution_id"] for e in fired] == [state.execution_id]
    assert fired[0].tenant == "gaia" and fired[0].data["tenant"] == "gaia" and fired[0].data["depth"] == 1
    for other in (unowned, foreign):
        assert await platform.log.stream_version(f"trigger-gaia.gaia_anomaly-{other.id}") == 0
    await asyncio.sleep(0.2)
    assert len(platform.engine.list(workflow_id="anomaly_review")) == 1


async def _completed(platform: Platform, workflow_id: str) -> list[Any]:
    return [s for s in platform.engine.list(workflow_id=workflow_id) if s.status == "COMPLETED"]


async def test_phases_chain_from_1_to_4_and_reach_the_user_live(platform: Platform) -> None:
    headers = {"x-service-key": platform.key}
    async with aiohttp.ClientSession() as session:
        for bad in ("0", "8", "x", "1.5", "-1"):
            async with session.post(
                f"{platform.url}/api/v1/workflow/phase/{bad}", json={"user_id": "u"}, headers=headers
            ) as resp:
                assert resp.status == 400
                assert "1 to 7" in (await resp.json())["error"]
        async with session.post(f"{platform.url}/api/v1/workflow/phase/1", json={}, headers=headers) as resp:
            assert resp.status == 400 and "user_id" in (await resp.json())["error"]

        # A user is known once a phase ran for it: before, following it is a 404 (as another
        # client's user is). Phase 7 (a payout: it starts no other) runs for user_123 first.
        async with session.get(f"{platform.url}/users/user_123/updates", headers=headers) as resp:
            assert resp.status == 404
        payload = {"user_id": "user_123", "seller_id": "seller_456", "sync_id": "oauth_user_123_1"}
        payout = {**payload, "claim_id": "c-1", "amount": "12.00"}
        async with session.post(f"{platform.url}/api/v1/workflow/phase/7", json=payout, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
        await _wait_for(lambda: _completed(platform, "phase_7"))
        earlier_calls = len(platform.stub_calls)

        # The user is connected over SSE and over a WebSocket before the pipeline starts.
        sse = await session.get(f"{platform.url}/users/user_123/updates", headers=headers)
        assert sse.headers["Content-Type"].startswith("text/event-stream")
        ws = await session.ws_connect(f"{platform.url}/users/user_123/ws", headers=headers)
        assert (await ws.receive_json())["type"] == "connected"

        async with session.post(f"{platform.url}/api/v1/workflow/phase/1", json=payload, headers=headers) as resp:
            assert resp.status == 202, await resp.text()

        async def completed_phases(updates: list[dict[str, Any]]) -> set[str]:
            return {u["workflow_id"] for u in updates if u["type"] == "execution.completed"}

        ws_updates: list[dict[str, Any]] = []
        while len(await completed_phases(ws_updates)) < 4:
            ws_updates.append(await asyncio.wait_for(ws.receive_json(), 20))
        sse_updates: list[dict[str, Any]] = []
        async for line in sse.content:
            if line.startswith(b"data: "):
                sse_updates.append(json.loads(line[6:]))
                if len(await completed_phases(sse_updates)) == 4:
                    break
        await ws.close()
        sse.close()
    # Seed 001's chain is 1 -> 2 -> 3 -> 4; phases 5, 6 and 7 wait for their own triggers.
    assert await completed_phases(ws_updates) == {f"phase_{n}" for n in range(1, 5)}
    assert ws_updates[0]["type"] == "phase.triggered" and ws_updates[0]["phase"] == 1
    # Each phase ran after the previous one, with what it passed on.
    calls = [c for c in platform.stub_calls[earlier_calls:] if c["path"].startswith("/phases/")]
    assert [c["body"]["phase"] for c in calls] == [1, 2, 2, 3, 4]
    assert all(c["body"]["user_id"] == "user_123" for c in calls)
    assert calls[-1]["body"]["sync_id"] == "oauth_user_123_1"
    # Each phase's work ran on the platform's core service; the mirror carries its report.
    assert all(c["body"]["report"].startswith(f"Phase {c['body']['phase']} (") for c in calls)
    assert all(c["body"]["metadata"] == {"seller_id": "seller_456"} for c in calls)
    # The integrations service is external: the workflow's worker token never reaches it.
    assert all(c["authorization"] is None for c in calls)
    # Enhancement "retries of phase transitions": phase 2's 503 was retried by the platform.
    retries = [u for u in sse_updates if u["type"] == "step.failed" or u.get("attempt") == 2]
    assert retries, "the retried phase transition reached the user"
    async with aiohttp.ClientSession() as session:
        # Enhancement "central phase audit log": one trail per user, from the log.
        async with session.get(f"{platform.url}/api/v1/workflow/phases/user_123/audit", headers=headers) as resp:
            audit = await resp.json()
    assert sorted(e["phase"] for e in audit["executions"]) == [1, 2, 3, 4, 7]
    assert all(e["status"] == "COMPLETED" for e in audit["executions"])
    trail_types = [e["type"] for e in audit["auditTrail"]]
    assert (
        trail_types[0] == "nexus.workflow.phase.triggered"
        and trail_types.count("nexus.workflow.phase.triggered") == 5
        and trail_types.count("nexus.workflow.execution.completed") == 5
    )
    # Enhancement "transition metrics": counted per workflow and transition.
    assert live.TRANSITIONS.labels("phase_7", "execution.completed")._value.get() >= 1
