"""Issue 9, finding 8: a client's workflow cannot borrow the workflow replica's authority.

Before, ``api_call`` steps to platform services carried the replica's own worker token, so
client B's workflow could read and process a handshake that B itself was refused. Now a step
carries a token delegated from its execution's tenant: the granulator applies B's permissions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.eventlog import EventLog, open_event_log
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.granulator import bootstrap as granulator_bootstrap
from nexus.services.granulator import handlers
from nexus.services.granulator import load_settings as granulator_settings
from nexus.services.workflow.bootstrap import bootstrap as workflow_bootstrap
from nexus.services.workflow.context import CTX_KEY
from nexus.services.workflow.settings import load_settings as workflow_settings

HANDSHAKE = {
    "stage": "content_granulation",
    "input": {"topic": "Quarterly plan", "structure_type": "article", "depth": 1, "sources": 0},
    "requirements": {"memory_mb": 128, "timeout_ms": 60000},
}


@dataclass
class Platform:
    granulator: Service
    workflow: Service
    log: EventLog
    http: aiohttp.ClientSession

    @property
    def granulator_url(self) -> str:
        return f"http://127.0.0.1:{self.granulator.port}"

    @property
    def workflow_url(self) -> str:
        return f"http://127.0.0.1:{self.workflow.port}"

    async def call(self, method: str, url: str, secret: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, url, json=body, headers={"X-API-Key": secret}) as r:
            return r.status, await r.json()

    async def run(self, secret: str, workflow_id: str, inp: dict[str, Any]) -> dict[str, Any]:
        """Start an execution as the key's client and wait for its end."""
        status, started = await self.call(
            "POST", f"{self.workflow_url}/executions", secret, {"workflow_id": workflow_id, "input": inp}
        )
        assert status == 202, started
        async with asyncio.timeout(20):
            while True:
                status, state = await self.call("GET", f"{self.workflow_url}/executions/{started['id']}", secret)
                assert status == 200, state
                if state["status"] in ("COMPLETED", "FAILED", "CANCELLED", "COMPENSATED"):
                    return state
                await asyncio.sleep(0.05)


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    """The granulator and a workflow service sharing one SQLite log, on free ports."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    bus = MemoryBus()
    await bus.ensure_streams()
    granulator = await granulator_bootstrap(
        granulator_settings({"NEXUS_GRANULATOR_PORT": "0", "NEXUS_DATA_DIR": str(tmp_path / "g")}),
        log=await open_event_log(url),
        bus=bus,
        raw=MemoryRaw(),
    )
    await granulator.start()
    workflow = await workflow_bootstrap(
        workflow_settings(
            {
                "NEXUS_WORKFLOW_PORT": "0",
                "NEXUS_DATA_DIR": str(tmp_path / "w"),
                "NEXUS_WORKFLOW_BUNDLED": "none",
                "NEXUS_GRANULATOR_PORT": str(granulator.port),
                "NEXUS_WORKFLOW_REPLICA_ID": "wf-deputy",
            }
        ),
        log=await open_event_log(url),
        bus=bus,
        raw=MemoryRaw(),
    )
    await workflow.start()
    http = aiohttp.ClientSession()
    try:
        yield Platform(granulator, workflow, granulator.log, http)
    finally:
        await http.close()
        await workflow.stop()
        await granulator.stop()


def reader(workflow_id: str, method: str, endpoint: str, input_map: dict[str, Any] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": "peek",
        "service": "granulator",
        "method": method,
        "endpoint": endpoint,
        "retry": {"max_attempts": 1},
    }
    if input_map is not None:
        step["input_map"] = input_map
    return {"id": workflow_id, "steps": [step]}


async def test_a_client_s_workflow_cannot_reach_another_s_handshake_through_the_replica(platform: Platform) -> None:
    alice = await issue_key(platform.log, "client", "alice")
    bob = await issue_key(platform.log, "client", "bob")
    worker = await issue_key(platform.log, "worker", "external-worker")

    # Alice's handshake, and an external worker's: two victims.
    status, mine = await platform.call(
        "POST", f"{platform.granulator_url}/api/handshake", alice.secret, {**HANDSHAKE, "execution_id": "alice-job"}
    )
    assert status == 200 and mine["accepted"], mine
    headers = {"Authorization": f"Bearer {worker.secret}", "X-Worker-ID": "external-worker"}
    async with platform.http.post(
        f"{platform.granulator_url}/api/handshake", headers=headers, json={**HANDSHAKE, "execution_id": "worker-job"}
    ) as r:
        theirs = await r.json()
        assert r.status == 200 and theirs["accepted"], theirs
    victims = {mine["handshake_id"]: "alice-job", theirs["handshake_id"]: "worker-job"}
    before = {hs: await platform.log.read_stream(handlers.stream_id(hs)) for hs in victims}

    # Bob is refused directly...
    for hs in victims:
        status, _ = await platform.call("GET", f"{platform.granulator_url}/api/handshakes/{hs}", bob.secret)
        assert status == 404

    # ...and through his own workflow, which reads and processes by handshake id.
    for definition in (
        reader("peek_handshake", "GET", "/api/handshakes/{handshake_id}"),
        reader(
            "process_handshake",
            "POST",
            "/api/process",
            {"handshake_id": "$.input.handshake_id", "execution_id": "$.input.execution_id"},
        ),
        reader(
            "acknowledge_handshake",
            "POST",
            "/api/acknowledge",
            {"handshake_id": "$.input.handshake_id", "execution_id": "$.input.execution_id", "status": "failed"},
        ),
    ):
        status, body = await platform.call("POST", f"{platform.workflow_url}/workflows", bob.secret, definition)
        assert status in (200, 201), body
        for hs, execution in victims.items():
            state = await platform.run(bob.secret, definition["id"], {"handshake_id": hs, "execution_id": execution})
            assert state["status"] == "FAILED", state
            assert "404" in str(state.get("error")), state

    # Nothing happened to either handshake.
    for hs in victims:
        assert await platform.log.read_stream(handlers.stream_id(hs)) == before[hs]

    # Control: Alice's own workflow reads and processes her handshake with her delegated authority.
    for definition in (
        reader("my_handshake", "GET", "/api/handshakes/{handshake_id}"),
        reader(
            "my_process",
            "POST",
            "/api/process",
            {"handshake_id": "$.input.handshake_id", "execution_id": "$.input.execution_id"},
        ),
    ):
        status, body = await platform.call("POST", f"{platform.workflow_url}/workflows", alice.secret, definition)
        assert status in (200, 201), body
        state = await platform.run(
            alice.secret, definition["id"], {"handshake_id": mine["handshake_id"], "execution_id": "alice-job"}
        )
        assert state["status"] == "COMPLETED", state
    events = await platform.log.read_stream(handlers.stream_id(mine["handshake_id"]))
    assert events[-1].type == handlers.COMPLETED


async def test_the_replica_never_lends_its_worker_token_to_a_step(platform: Platform) -> None:
    # Every step credential the engine would send names the execution's tenant, never the replica.
    engine = platform.workflow.app[CTX_KEY].engine
    headers = engine.identity.step_headers("bob", "ex-1", "core")
    assert set(headers) == {"X-API-Key"} and headers["X-API-Key"].startswith("nxd_")
    info = await platform.granulator.keys.verify(headers["X-API-Key"])
    assert info is not None and (info.tenant, info.execution_id, info.scopes) == ("bob", "ex-1", ("delegated",))
    assert "Authorization" not in headers and engine.identity.worker_id not in str(headers)
