"""A dead HTTP peer: an ``api_call`` step retries with back-off, then fails naming the service and the
reason; a peer that comes back before the retries run out lets the execution complete. The
workflow service (its own bootstrap, a real aiohttp server) keeps serving throughout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from processes import free_port
from resilience_support import within

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.workflow.bootstrap import bootstrap
from nexus.services.workflow.context import CTX_KEY
from nexus.services.workflow.settings import load_settings

MAX_ATTEMPTS = 4
BACKOFF_MS = 150


@dataclass
class Workflow:
    service: Service
    http: aiohttp.ClientSession
    url: str
    peer_port: int

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        async with self.http.request(method, self.url + path, data=data) as resp:
            return resp.status, await resp.json()

    async def final(self, execution_id: str, seconds: float = 15.0) -> Any:
        async def watch() -> Any:
            async for state in self.service.app[CTX_KEY].engine.watch(execution_id):
                if state.final:
                    return state
            return None

        return await within(watch(), f"execution {execution_id} reaching a final status", seconds)

    async def start(self, workflow_id: str) -> str:
        status, body = await self.call("POST", "/executions", {"workflow_id": workflow_id, "input": {"n": 1}})
        assert status == 202, body
        return str(body["id"])


@pytest.fixture
async def workflow(tmp_path: Path) -> AsyncIterator[Workflow]:
    peer_port = free_port()
    settings = load_settings(
        {
            "NEXUS_WORKFLOW_PORT": "0",
            "NEXUS_DATA_DIR": str(tmp_path),
            "NEXUS_WORKFLOW_BUNDLED": "none",
            "NEXUS_SERVICE_PEER": f"http://127.0.0.1:{peer_port}",
        }
    )
    bus = MemoryBus()
    await bus.ensure_streams()
    service = await bootstrap(settings, log=MemoryEventLog(), bus=bus, raw=MemoryRaw(), optional_modules=False)
    await service.start()
    key = await issue_key(service.log, "client", "resilience")
    http = aiohttp.ClientSession(headers={"x-service-key": key.secret})
    running = Workflow(service, http, f"http://127.0.0.1:{service.port}", peer_port)
    definition = {
        "id": "call_peer",
        "steps": [
            {
                "id": "ask",
                "service": "peer",
                "endpoint": "/answer",
                "timeout_seconds": 2,
                "retry": {"max_attempts": MAX_ATTEMPTS, "backoff_ms": BACKOFF_MS, "multiplier": 2, "jitter": 0},
            }
        ],
        "output": {"answer": "$.steps.ask.output.answer"},
    }
    status, body = await running.call("POST", "/workflows", definition)
    assert status == 201, body
    try:
        yield running
    finally:
        await http.close()
        await service.stop()


async def _peer(port: int) -> web.AppRunner:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"answer": 42})

    app = web.Application()
    app.router.add_post("/answer", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _attempt_times(events: list[dict[str, Any]]) -> list[str]:
    return [e["time"] for e in events if e["type"].endswith("step.started")]


async def test_a_dead_peer_fails_the_step_after_back_off_and_the_service_keeps_serving(workflow: Workflow) -> None:
    execution_id = await workflow.start("call_peer")
    # While the step retries, the service answers its API.
    status, health = await workflow.call("GET", "/healthz")
    assert (status, health["status"]) == (200, "ok")
    state = await workflow.final(execution_id)
    assert state.status == "FAILED", state
    status, body = await workflow.call("GET", f"/executions/{execution_id}/events")
    assert status == 200
    events = body["events"]
    retrying = [e for e in events if e["type"].endswith("step.retrying")]
    assert len(retrying) == MAX_ATTEMPTS - 1, [e["type"] for e in events]
    failed = next(e for e in events if e["type"].endswith("step.failed"))
    error = failed["data"]["error"]
    # The reason: the peer refuses connections, and the step gave up after its attempts.
    assert f"127.0.0.1:{workflow.peer_port}" in error and "Cannot connect" in error, error
    assert f"gave up after {MAX_ATTEMPTS} attempts" in error, error
    # Back-off grows: 150 ms, 300 ms, 600 ms between attempts (jitter 0).
    retry_ats = [e["data"]["retry_at"] for e in retrying]
    assert len(set(retry_ats)) == len(retry_ats)
    assert len(_attempt_times(events)) == MAX_ATTEMPTS
    status, _ = await workflow.call("GET", f"/executions/{execution_id}")
    assert status == 200


async def test_a_dead_peer_error_names_the_service(workflow: Workflow) -> None:
    execution_id = await workflow.start("call_peer")
    state = await workflow.final(execution_id)
    _, body = await workflow.call("GET", f"/executions/{execution_id}/events")
    failed = next(e for e in body["events"] if e["type"].endswith("step.failed"))
    assert state.status == "FAILED"
    assert "peer" in failed["data"]["error"].replace(f"127.0.0.1:{workflow.peer_port}", ""), failed["data"]["error"]


async def test_a_peer_back_before_the_retries_run_out_completes_the_execution(workflow: Workflow) -> None:
    engine = workflow.service.app[CTX_KEY].engine
    execution_id = await workflow.start("call_peer")

    async def first_retry() -> None:
        async for state in engine.watch(execution_id):
            step = state.steps.get("ask")
            if step is not None and step.status == "retrying":
                return

    await within(first_retry(), "the step retrying after the dead peer refused it")
    runner = await _peer(workflow.peer_port)
    try:
        state = await workflow.final(execution_id)
        assert state.status == "COMPLETED", state
        status, body = await workflow.call("GET", f"/executions/{execution_id}")
        assert status == 200 and body["output"] == {"answer": 42}, body
        _, history = await workflow.call("GET", f"/executions/{execution_id}/events")
        attempts = _attempt_times(history["events"])
        assert 2 <= len(attempts) <= MAX_ATTEMPTS
    finally:
        await runner.cleanup()
    # Another execution right after also completes: nothing is stuck.
    again = await workflow.start("call_peer")
    runner = await _peer(workflow.peer_port)
    try:
        assert (await workflow.final(again)).status == "COMPLETED"
    finally:
        await runner.cleanup()
    await asyncio.sleep(0)
