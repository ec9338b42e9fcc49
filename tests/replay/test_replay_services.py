"""Every fold a service keeps in memory is a replay projection, and ``nexus replay --verify`` checks it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from nexus.auth import issue_key, revoke_key
from nexus.eventlog import EventLog, open_event_log
from nexus.services.workflow.projections import Executions
from nexus.services.workflow.view import ExecutionView
from tests.inprocess import GRANULATOR_HANDSHAKE, build

FOLDS = (
    "granulator.handshakes",
    "platform.keys",
    "workflow.executions",
    "workflow.jobs",
    "workflow.registry",
    "workflow.triggers",
)
ROOT = Path(__file__).resolve().parents[2]


async def run_a_platform(log: EventLog, tmp_path: Path) -> None:
    """Keys, a workflow, executions, a trigger that fires, a job and a handshake, through the services' APIs."""
    workflow = await build("workflow", tmp_path, log=log, NEXUS_WORKFLOW_BUNDLED="none")
    granulator = await build("granulator", tmp_path, log=log, NEXUS_GRANULATOR_REPLICA_ID="r1")
    await workflow.start()
    await granulator.start()
    try:
        client = {"x-service-key": (await issue_key(log, "client", "acme")).secret}
        worker = (await issue_key(log, "worker", "orchestrator")).secret
        revoked = await issue_key(log, "client", "gone")
        await revoke_key(log, revoked.info.key_id)
        async with aiohttp.ClientSession() as http:
            definition = {
                "id": "noop",
                "steps": [{"id": "w", "type": "wait_event", "event": "x.y", "timeout_seconds": 60}],
            }
            async with http.post(
                f"http://127.0.0.1:{workflow.port}" + "/workflows", data=json.dumps(definition), headers=client
            ) as resp:
                assert resp.status == 201, await resp.text()
            trigger = {"id": "on_start", "event_type": "nexus.workflow.job.initiated", "workflow_id": "noop"}
            async with http.post(
                f"http://127.0.0.1:{workflow.port}" + "/triggers", json=trigger, headers=client
            ) as resp:
                assert resp.status == 201, await resp.text()
            for _ in range(3):
                body = {"workflow_id": "noop", "input": {}}
                async with http.post(
                    f"http://127.0.0.1:{workflow.port}" + "/executions", json=body, headers=client
                ) as resp:
                    assert resp.status == 202, await resp.text()
            job = {"workflowId": "noop", "title": "t", "description": "d"}
            async with http.post(
                f"http://127.0.0.1:{workflow.port}" + "/job/initiate", json=job, headers=client
            ) as resp:
                assert resp.status < 300, await resp.text()
            headers = {"Authorization": f"Bearer {worker}", "X-Worker-ID": "orchestrator"}
            async with http.post(
                f"http://127.0.0.1:{granulator.port}" + "/api/handshake", json=GRANULATOR_HANDSHAKE, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
            # The trigger fires on the job's event: wait for its execution (4 in all).
            engine_view: Any = None
            for _ in range(200):
                engine_view = ExecutionView(log)
                await engine_view.load()
                if len(engine_view.states) >= 4:
                    break
                await asyncio.sleep(0.05)
            assert engine_view is not None and len(engine_view.states) == 4
    finally:
        await workflow.stop()
        await granulator.stop()


def replay_verify(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEXUS_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)}
    env.pop("NEXUS_EVENT_LOG_URL", None)
    env.pop("NEXUS_RAW_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "nexus.cli.main", "replay", "--verify", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


async def test_replay_verify_checks_every_service_fold(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log = await open_event_log(f"sqlite:///{data / 'events.db'}")
    try:
        await run_a_platform(log, tmp_path)
    finally:
        await log.close()
    # The command line, as a process, on the SQLite log: every service's fold is named with its
    # count of entities and its digest, and agrees with the fold as the service builds it.
    done = replay_verify(data)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[1].rstrip(":"): line for line in done.stdout.splitlines() if line[:3] in ("OK ", "MIS")}
    assert set(FOLDS) <= set(lines), done.stdout
    for name in FOLDS:
        assert lines[name].startswith(f"OK {name}: "), lines[name]
        assert "digest " in lines[name] and "compared with the service's fold" in lines[name]
    # Four executions (one started by the trigger) and the replica that ran them (its heartbeat).
    assert "workflow.executions: 5 entities" in lines["workflow.executions"]
    # Three keys issued here (one revoked), and the workflow service's delegation signer.
    assert int(lines["platform.keys"].split(": ")[1].split()[0]) >= 4
    # The client's trigger and the platform's bundled ones.
    assert int(lines["workflow.triggers"].split(": ")[1].split()[0]) >= 2
    assert "workflow.jobs: 1 entities" in lines["workflow.jobs"]
    assert "granulator.handshakes: 1 entities" in lines["granulator.handshakes"]
    # The client's workflow and the platform's bundled schemas and workflows.
    assert int(lines["workflow.registry"].split(": ")[1].split()[0]) >= 2
    # A fold that drops an event is caught, and named with both sides.
    bad = replay_verify(data, "--projection", "tests.replay.test_replay_services:CorruptedExecutions")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "MISMATCH workflow.executions.corrupted: 4 entities" in bad.stdout
    assert "which holds 5 entities with digest" in bad.stdout


class CorruptedExecutions(Executions):
    """The executions fold with a bug: it never sees the second execution's events."""

    name = "workflow.executions.corrupted"

    def __init__(self) -> None:
        super().__init__()
        self.lost = ""

    def fold_event(self, fold: ExecutionView, event: Any) -> None:
        stream = event.streamid or ""
        if (
            stream.startswith("execution-")
            and not self.lost
            and len(fold.states) == 1
            and stream[10:] not in fold.states
        ):
            self.lost = stream
        if stream == self.lost:
            return
        super().fold_event(fold, event)
