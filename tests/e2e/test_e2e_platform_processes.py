"""The platform as a user runs it: ``nexus up`` as a process, a client key from ``nexus keys create``, a
workflow registered over HTTP and run with ``nexus workflow run --wait``, its events on NATS, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp.test_utils import TestServer
from e2e_platform import SCHEMA, WORKFLOW, stub_app, within
from nats.errors import TimeoutError as NatsTimeoutError

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SERVICES = ("kam", "workflow", "granulator", "studio")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def nexus(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the ``nexus`` command line as a process; (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 20)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"nexus {' '.join(args)} did not finish within 20 s") from None
    return int(process.returncode or 0), out.decode(), err.decode()


async def test_nexus_up_runs_a_registered_workflow_whose_events_reach_nats_then_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    calls: list[dict[str, Any]] = []
    async with TestServer(await stub_app(calls), host="127.0.0.1", port=0) as stub:
        ports = {name: free_port() for name in SERVICES}
        nats_port = free_port()
        env = {
            **os.environ,
            "NEXUS_DATA_DIR": str(tmp_path / "data"),
            "NEXUS_NATS_PORT": str(nats_port),
            "NEXUS_ADMIN_PASSWORD": secrets.token_urlsafe(16),
            "NEXUS_SERVICE_GAIA": str(stub.make_url("")).rstrip("/"),
            **{f"NEXUS_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        }
        for variable in ("NEXUS_NATS_URL", "NEXUS_EVENT_LOG_URL", "NEXUS_RAW_URL", "NEXUS_WORKFLOW_URL"):
            env.pop(variable, None)
        up = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nexus.cli.main",
            "up",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert up.stdout is not None
        seen: list[str] = []
        drainer: asyncio.Task[None] | None = None
        try:

            async def until_ready() -> None:
                while line := await up.stdout.readline():  # type: ignore[union-attr]
                    seen.append(line.decode(errors="replace"))
                    if "Press Ctrl-C to stop." in seen[-1]:
                        return
                raise AssertionError("nexus up ended before it was ready:\n" + "".join(seen))

            try:
                await asyncio.wait_for(until_ready(), 40)
            except TimeoutError:
                raise AssertionError("nexus up not ready within 40 s:\n" + "".join(seen)) from None

            async def drain() -> None:
                # The children's logs keep coming: read them so the pipe never blocks anyone.
                while line := await up.stdout.readline():  # type: ignore[union-attr]
                    seen.append(line.decode(errors="replace"))

            drainer = asyncio.create_task(drain())
            started = children_of(up.pid)

            # A client key, issued from the command line against the same data directory.
            code, out, err = await nexus("keys", "create", "--client", "e2e", env=env)
            assert code == 0, err
            key = out.splitlines()[1].strip()
            assert key and "e2e" in out.splitlines()[0]

            # A downstream user's JetStream consumer on the workflow events, before anything runs.
            nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
            try:
                js = nc.jetstream()
                downstream = await js.pull_subscribe("nexus.evt.workflow.>", durable="e2e-up", stream="NEXUS_EVT")

                workflow_url = f"http://127.0.0.1:{ports['workflow']}"
                async with aiohttp.ClientSession(headers={"x-service-key": key}) as http:
                    for path, document in (("/schemas", SCHEMA), ("/workflows", WORKFLOW)):
                        async with http.post(workflow_url + path, data=document) as response:
                            assert response.status == 201, await response.text()

                run_env = {**env, "NEXUS_SERVICE_KEY": key}
                payload = {"title": "Quake", "confidence": 0.97, "region": "tohoku"}
                code, out, err = await nexus(
                    "workflow", "run", "anomaly_job", "--input", json.dumps(payload), "--wait", env=run_env
                )
                assert code == 0, out + err
                execution_id = out.splitlines()[0].strip()
                assert "  status     COMPLETED" in out.splitlines(), out
                assert '"verdict": "confirmed: Quake"' in out
                assert calls == [payload]

                received: list[Any] = []

                async def until_completed() -> None:
                    while True:
                        try:
                            messages = await downstream.fetch(batch=100, timeout=1)
                        except NatsTimeoutError:
                            continue
                        for msg in messages:
                            await msg.ack()
                            body = json.loads(msg.data)
                            if body.get("subject") == execution_id:
                                received.append(msg)
                                if body["type"] == "nexus.workflow.execution.completed":
                                    return

                await within(until_completed(), "the execution's events on nexus.evt.workflow.>")
            finally:
                await nc.close()
            types = [json.loads(m.data)["type"].removeprefix("nexus.workflow.") for m in received]
            assert types == [
                "execution.queued",
                "execution.claimed",
                "step.started",
                "step.completed",
                "execution.completed",
            ]
            assert all(m.headers["Nats-Msg-Id"] == json.loads(m.data)["id"] for m in received)
            assert json.loads(received[-1].data)["data"]["output"] == {"verdict": "confirmed: Quake"}

            # Ctrl-C: everything stops within 5 seconds and no process or port is left behind.
            stop_started = time.monotonic()
            up.send_signal(signal.SIGINT)
            status = await within(up.wait(), "nexus up stopping after SIGINT", 8)
            elapsed = time.monotonic() - stop_started
            await within(drainer, "the end of nexus up's output", 5)
            output = "".join(seen)
            assert status == 0, output
            assert elapsed < 5.0, output
            assert "Nexus stopped." in output
            assert [pid for pid in started if alive(pid)] == []
            assert not any(listening(port) for port in (nats_port, *ports.values()))
        finally:
            if up.returncode is None:
                # A failed assertion must not leave the platform running: kill what it started, then it.
                for pid in children_of(up.pid):
                    os.kill(pid, signal.SIGKILL)
                up.kill()
                await up.wait()
            if drainer is not None and not drainer.done():
                drainer.cancel()
