"""Durability: kill -9 the workflow service while executions run, start it again, and every
execution finishes with each step's effect applied exactly once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nexus.auth import issue_key
from nexus.eventlog import open_event_log
from nexus.proto import parse_rfc3339

pytestmark = [pytest.mark.nats, pytest.mark.slow]


class Process:
    """The workflow service as a child process (python -m nexus.services.workflow)."""

    def __init__(self, env: dict[str, str], stderr: Path) -> None:
        self.env = env
        self.stderr = stderr
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> None:
        offset = self.stderr.stat().st_size if self.stderr.exists() else 0
        with self.stderr.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nexus.services.workflow", env=self.env, stdout=err, stderr=err
            )
        async with asyncio.timeout(20):
            while True:
                text = self.stderr.read_bytes()[offset:].decode(errors="replace")
                found = re.search(r'listening on http://[^"]*?:(\d+)"', text)
                if found:
                    self.url = f"http://127.0.0.1:{found.group(1)}"
                    return
                if self.proc.returncode is not None:
                    raise AssertionError(f"the service exited at start:\n{text}")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> None:
        if self.proc is not None:
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def service_env(tmp_path: Path, nats_url: str, stub_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
        "NEXUS_EVENT_LOG_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "NEXUS_NATS_URL": nats_url,
        "NEXUS_WORKFLOW_PORT": "0",
        "NEXUS_WORKFLOW_BUNDLED": "none",
        "NEXUS_WORKFLOW_REPLICA_ID": "crash-test",
        "NEXUS_SERVICE_STUB": stub_url,
        "NEXUS_LOG_LEVEL": "info",
        **extra,
    }


async def client_session(tmp_path: Path) -> aiohttp.ClientSession:
    """An HTTP session carrying a client API key issued in the service's log."""
    log = await open_event_log(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        key = await issue_key(log, "client", "durability-tests")
    finally:
        await log.close()
    return aiohttp.ClientSession(headers={"x-service-key": key.secret})


async def statuses(http: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with http.get(f"{url}/queue/stats") as r:
        return (await r.json())["statuses"]


async def test_kill_9_during_200_executions_then_every_effect_once(tmp_path, nats_server, stub, until):
    service = Process(service_env(tmp_path, nats_server, stub.url), tmp_path / "service.log")
    await service.start()
    http = await client_session(tmp_path)
    try:
        slow = {"retry": {"max_attempts": 5, "backoff_ms": 50}}
        workflow = {
            "id": "crash",
            "steps": [
                {"id": f"s{i}", "service": "stub", "endpoint": f"/slow/{ms}", "input_map": {"n": "$.input.n"}, **slow}
                for i, ms in enumerate((400, 300, 400))
            ],
        }
        async with http.post(f"{service.url}/workflows", json=workflow) as r:
            assert r.status == 201, await r.text()
        ids: list[str] = []
        for n in range(200):
            async with http.post(f"{service.url}/executions", json={"workflow_id": "crash", "input": {"n": n}}) as r:
                assert r.status == 202
                ids.append((await r.json())["id"])
        # Kill it while steps are in flight: some effects applied, most not yet.
        await until(lambda: sum(stub.effects.values()) >= 100, timeout=30)
        service.kill()
        await service.wait()
        applied_at_kill = sum(stub.effects.values())
        assert applied_at_kill < 600
        # Start it again: it resumes every unfinished execution from the log.
        restarted = time.perf_counter()
        await service.start()
        async with asyncio.timeout(60):
            while (await statuses(http, service.url)).get("COMPLETED", 0) < 200:  # noqa: ASYNC110 - polls over HTTP
                await asyncio.sleep(0.1)
        resumed_in = time.perf_counter() - restarted
        # Every step of every execution had its effect applied exactly once.
        keys = {f"{execution_id}:s{i}" for execution_id in ids for i in range(3)}
        assert set(stub.effects) == keys
        assert all(count == 1 for count in stub.effects.values())
        # And the log says each step completed once: none ran twice after its result was recorded.
        for execution_id in ids[:50]:
            async with http.get(f"{service.url}/executions/{execution_id}/events") as r:
                events = (await r.json())["events"]
            completed = [e["data"]["step_id"] for e in events if e["type"] == "nexus.workflow.step.completed"]
            assert sorted(completed) == ["s0", "s1", "s2"]
            assert events[-1]["type"] == "nexus.workflow.execution.completed"
        resent = sum(1 for key in keys if stub.requests[key] > 1)
        print(f"effects at kill: {applied_at_kill}; resent after restart: {resent}; all done in {resumed_in:.2f} s")
    finally:
        await http.close()
        await service.stop()


async def test_back_off_and_deadline_survive_a_restart(tmp_path, nats_server, stub, until):
    service = Process(service_env(tmp_path, nats_server, stub.url), tmp_path / "service.log")
    await service.start()
    http = await client_session(tmp_path)
    try:
        await http.post(
            f"{service.url}/workflows",
            json={
                "id": "backoff",
                "steps": [
                    {
                        "id": "a",
                        "service": "stub",
                        "endpoint": "/flaky/1",
                        "retry": {"max_attempts": 3, "backoff_ms": 1500, "jitter": 0},
                    }
                ],
            },
        )
        await http.post(
            f"{service.url}/workflows",
            json={
                "id": "deadline",
                "timeout_seconds": 2,
                "steps": [{"id": "w", "type": "wait_event", "event": "nexus.ext.never", "timeout_seconds": 60}],
            },
        )
        async with http.post(f"{service.url}/executions", json={"workflow_id": "backoff", "input": {}}) as r:
            backoff_id = (await r.json())["id"]
        async with http.post(f"{service.url}/executions", json={"workflow_id": "deadline", "input": {}}) as r:
            deadline_id = (await r.json())["id"]
        started = time.monotonic()
        await until(lambda: stub.requests[f"{backoff_id}:a"] >= 1)
        await asyncio.sleep(0.2)  # the failure and its due time are recorded
        service.kill()
        await service.wait()
        await service.start()

        async def final(execution_id: str) -> dict[str, Any]:
            async with asyncio.timeout(15):
                while True:
                    async with http.get(f"{service.url}/executions/{execution_id}") as r:
                        state = await r.json()
                    if state["status"] in ("COMPLETED", "FAILED", "COMPENSATED", "CANCELLED", "TIMED_OUT"):
                        return state
                    await asyncio.sleep(0.05)

        state = await final(backoff_id)
        assert state["status"] == "COMPLETED"
        # The retry waited out the stored back-off (1.5 s from the first failure), not less, not anew.
        async with http.get(f"{service.url}/executions/{backoff_id}/events") as r:
            events = (await r.json())["events"]
        retrying = next(e for e in events if e["type"] == "nexus.workflow.step.retrying")
        second = [e for e in events if e["type"] == "nexus.workflow.step.started"][-1]
        gap = _seconds(second["time"]) - _seconds(retrying["time"])
        assert 1.4 <= gap <= 4.0, gap
        state = await final(deadline_id)
        assert state["status"] == "TIMED_OUT"
        assert 1.9 <= time.monotonic() - started <= 8
    finally:
        await http.close()
        await service.stop()


def _seconds(rfc3339: str) -> float:
    return parse_rfc3339(rfc3339).timestamp()
