"""Seed 002's orchestrator contract: POST /api/pipelines/execute runs a template's stages through
the workers' handshake → process → acknowledge, with a checkpoint per stage; a service stopped
mid-pipeline resumes, once restarted, at the stage it was in, and no stage runs twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.eventlog import open_event_log
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.workflow.bootstrap import bootstrap
from nexus.services.workflow.context import CTX_KEY
from nexus.services.workflow.settings import load_settings


@dataclass
class Worker:
    """A seed 002 worker: handshake, process (once per handshake, like the granulator), acknowledge."""

    url: str = ""
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """(verb, stage, body) of every request, in order."""
    handshakes: Counter[str] = field(default_factory=Counter)
    effects: Counter[str] = field(default_factory=Counter)
    """Stages actually processed (a repeated process of one handshake answers the first result)."""
    acks: Counter[str] = field(default_factory=Counter)
    stage_of: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    hold: str | None = None
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    failing: set[str] = field(default_factory=set)

    async def handshake(self, request: web.Request) -> web.Response:
        body = await request.json()
        stage = body["stage"]
        self.calls.append(("handshake", stage, body))
        self.handshakes[stage] += 1
        handshake_id = f"hs_{stage}_{self.handshakes[stage]}"
        self.stage_of[handshake_id] = stage
        return web.json_response({"accepted": True, "handshake_id": handshake_id, "execution_id": body["execution_id"]})

    async def process(self, request: web.Request) -> web.Response:
        body = await request.json()
        stage = self.stage_of[body["handshake_id"]]
        self.calls.append(("process", stage, body))
        if stage in self.failing:
            return web.json_response({"error": "generator_unavailable", "message": "model overloaded"}, status=503)
        if stage == self.hold and not self.release.is_set():
            self.held.set()
            await self.release.wait()
        if body["handshake_id"] not in self.results:
            self.effects[stage] += 1
            self.results[body["handshake_id"]] = {
                "status": "completed",
                "handshake_id": body["handshake_id"],
                "output": None,
                "output_ref": f"kv://out/{stage}.json",
            }
        return web.json_response(self.results[body["handshake_id"]])

    async def acknowledge(self, request: web.Request) -> web.Response:
        body = await request.json()
        stage = self.stage_of[body["handshake_id"]]
        self.calls.append(("acknowledge", stage, body))
        self.acks[stage] += 1
        return web.json_response({"status": "acknowledged", "handshake_id": body["handshake_id"]})


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    state = Worker()
    app = web.Application()
    app.router.add_post("/api/handshake", state.handshake)
    app.router.add_post("/api/process", state.process)
    app.router.add_post("/api/acknowledge", state.acknowledge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    state.release.set()
    await runner.cleanup()


async def start_service(tmp_path: Path, log_url: str, worker: Worker) -> tuple[Service, str]:
    settings = load_settings(
        {
            "NEXUS_WORKFLOW_PORT": "0",
            "NEXUS_DATA_DIR": str(tmp_path),
            "NEXUS_WORKFLOW_BUNDLED": "none",
            "NEXUS_WORKFLOW_REPLICA_ID": "orchestrator-1",
            "NEXUS_WORKFLOW_LEASE_SECONDS": "2",
            "NEXUS_SERVICE_RESEARCHER": worker.url,
            "NEXUS_SERVICE_WRITER": worker.url,
        }
    )
    bus = MemoryBus()
    await bus.ensure_streams()
    service = await bootstrap(settings, log=await open_event_log(log_url), bus=bus, raw=MemoryRaw())
    await service.start()
    return service, f"http://127.0.0.1:{service.port}"


def seed_body(**resources: Any) -> dict[str, Any]:
    return {
        "template": {
            "name": "comprehensive_report_pipeline",
            "stages": [
                {
                    "name": "topic_research",
                    "worker": "researcher",
                    "input": {"topic": "$.input.context.parameters.topic"},
                },
                {"name": "content_granulation", "worker": "writer", "input": {"structure_type": "research_report"}},
                {"name": "report_builder", "worker": "writer", "requirements": {"memory_mb": 256, "timeout_ms": 5000}},
            ],
        },
        "context": {"client_id": 1, "request_id": 123, "parameters": {"topic": "AI Tools Market Analysis"}},
        "resources": {"max_workers": 5, "timeout_ms": 300000, **resources},
    }


async def test_a_pipeline_resumes_after_a_stop_at_its_checkpoint_and_no_stage_runs_twice(
    tmp_path: Path, worker: Worker
) -> None:
    log_url = f"sqlite:///{tmp_path / 'events.db'}"
    first, url = await start_service(tmp_path, log_url, worker)
    acme = await issue_key(first.log, "client", "acme")
    other = await issue_key(first.log, "client", "other")
    http = aiohttp.ClientSession(headers={"X-API-Key": acme.secret})
    second: Service | None = None
    try:
        # The second stage's processing is held at the worker: the pipeline is mid-way.
        worker.hold = "content_granulation"
        async with http.post(f"{url}/api/pipelines/execute", json=seed_body()) as r:
            started = await r.json()
            assert r.status == 202, started
        execution_id = started["execution_id"]
        assert started["stages"] == ["topic_research", "content_granulation", "report_builder"]
        assert r.headers["Location"] == f"/api/pipelines/{execution_id}/checkpoint"
        async with asyncio.timeout(10):
            await worker.held.wait()

        # The checkpoint names the stage that finished and its data; the stage in flight is the current one.
        async with http.get(f"{url}/api/pipelines/{execution_id}/checkpoint") as r:
            checkpoint = await r.json()
            assert r.status == 200, checkpoint
        assert checkpoint["last_completed_stage"] == "topic_research"
        assert checkpoint["checkpoint_data"] == "kv://out/topic_research.json"
        assert checkpoint["current_stage"] == "content_granulation" and checkpoint["last_error"] is None
        assert [s["status"] for s in checkpoint["stages"]] == ["completed", "processing", "pending"]
        # Another client's key: the 404 of a missing execution.
        async with http.get(f"{url}/api/pipelines/{execution_id}/checkpoint", headers={"X-API-Key": other.secret}) as r:
            assert r.status == 404
        async with http.get(f"{url}/api/pipelines/no-such-execution/checkpoint") as r:
            assert r.status == 404

        # The orchestrator stops mid-stage (its in-flight call is cut); the worker finishes on its side.
        await first.stop()
        worker.release.set()
        before_restart = len(worker.calls)

        # Restarted, it resumes the execution at the stage it was in.
        second, url = await start_service(tmp_path, log_url, worker)
        engine = second.app[CTX_KEY].engine
        async with asyncio.timeout(15):
            async for state in engine.watch(execution_id):
                if state.final:
                    break
        assert state.status == "COMPLETED", state.error

        after = worker.calls[before_restart:]
        assert {stage for _, stage, _ in after} == {"content_granulation", "report_builder"}
        assert after[0][:2] == ("process", "content_granulation")  # not a new handshake: the same one
        # Every stage: one handshake, one processing, one acknowledgement.
        stages = ["topic_research", "content_granulation", "report_builder"]
        assert [worker.handshakes[s] for s in stages] == [1, 1, 1]
        assert [worker.effects[s] for s in stages] == [1, 1, 1]
        assert [worker.acks[s] for s in stages] == [1, 1, 1]
        # What went to the workers: the stage's input (a JSONPath over the context read), then the
        # previous stage's output reference as the next stage's data_ref.
        first_handshake = next(b for verb, s, b in worker.calls if verb == "handshake" and s == "topic_research")
        assert first_handshake["input"] == {"topic": "AI Tools Market Analysis"}
        assert first_handshake["execution_id"] == execution_id
        assert first_handshake["requirements"] == {"memory_mb": 128, "timeout_ms": 60000}
        processes = {s: b for verb, s, b in worker.calls if verb == "process"}
        assert "data_ref" not in processes["topic_research"] or processes["topic_research"]["data_ref"] is None
        assert processes["content_granulation"]["data_ref"] == "kv://out/topic_research.json"
        assert processes["report_builder"]["data_ref"] == "kv://out/content_granulation.json"
        acks = {s: b for verb, s, b in worker.calls if verb == "acknowledge"}
        assert acks["report_builder"]["output_ref"] == "kv://out/report_builder.json"

        async with aiohttp.ClientSession(headers={"X-API-Key": acme.secret}) as again:
            async with again.get(f"{url}/api/pipelines/{execution_id}/checkpoint") as r:
                final = await r.json()
        assert final["status"] == "COMPLETED" and final["last_completed_stage"] == "report_builder"
        assert final["checkpoint_data"] == "kv://out/report_builder.json" and final["restarts"] == 1
        assert [s["status"] for s in final["stages"]] == ["completed"] * 3
        assert state.output["stages"]["content_granulation"]["output_ref"] == "kv://out/content_granulation.json"
    finally:
        await http.close()
        if second is not None:
            await second.stop()


async def test_a_failing_stage_is_retried_and_its_error_is_the_checkpoints(tmp_path: Path, worker: Worker) -> None:
    service, url = await start_service(tmp_path, f"sqlite:///{tmp_path / 'events.db'}", worker)
    acme = await issue_key(service.log, "client", "acme")
    try:
        async with aiohttp.ClientSession(headers={"X-API-Key": acme.secret}) as http:
            worker.failing.add("content_granulation")
            body = seed_body()
            body["template"]["stages"][1]["retry"] = {"max_attempts": 2, "backoff_ms": 10}
            async with http.post(f"{url}/api/pipelines/execute", json=body) as r:
                execution_id = (await r.json())["execution_id"]
            engine = service.app[CTX_KEY].engine
            async with asyncio.timeout(15):
                async for state in engine.watch(execution_id):
                    if state.final:
                        break
            assert state.status == "FAILED"
            async with http.get(f"{url}/api/pipelines/{execution_id}/checkpoint") as r:
                checkpoint = await r.json()
            assert checkpoint["last_completed_stage"] == "topic_research"
            assert checkpoint["retry_count"] == 1 and "503" in checkpoint["last_error"]
            assert [s["status"] for s in checkpoint["stages"]] == ["completed", "failed", "pending"]
            assert worker.handshakes["report_builder"] == 0

            # Bad bodies are refused, naming what is wrong.
            bad = seed_body()
            bad["template"]["stages"][0]["worker"] = "nowhere"
            async with http.post(f"{url}/api/pipelines/execute", json=bad) as r:
                error = await r.json()
                assert (
                    r.status == 400
                    and "stages[0].worker" in error["message"]
                    and "NEXUS_SERVICE_NOWHERE" in error["message"]
                )
            bad = seed_body()
            bad["template"]["stages"][1]["name"] = "topic_research"
            async with http.post(f"{url}/api/pipelines/execute", json=bad) as r:
                assert r.status == 400 and "repeated: topic_research" in (await r.json())["message"]
            async with http.post(f"{url}/api/pipelines/execute", json={"context": {}}) as r:
                assert r.status == 400 and "template" in (await r.json())["message"]
            bad = seed_body()
            bad["template"]["stages"][0]["name"] = "a__b"
            async with http.post(f"{url}/api/pipelines/execute", json=bad) as r:
                assert r.status == 400
        # Without a key: 401.
        async with (
            aiohttp.ClientSession() as anonymous,
            anonymous.post(f"{url}/api/pipelines/execute", json=seed_body()) as r,
        ):
            assert r.status == 401
    finally:
        await service.stop()
