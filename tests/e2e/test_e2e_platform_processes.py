"""The platform as a user runs it: ``nexus up`` as a process, a client key from ``nexus keys create``, a
workflow registered over HTTP and run with ``nexus workflow run --wait``, its events on NATS, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp.test_utils import TestServer
from e2e_platform import SCHEMA, TRIGGER, WORKFLOW, anomaly, stub_app, within
from processes import alive, descendants, free_port, listening

from nexus.bus.embedded import load_credentials

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SERVICES = ("kam", "workflow", "granulator", "studio")


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


@dataclass
class Up:
    """A running ``nexus up`` process and what a user needs to reach it."""

    process: asyncio.subprocess.Process
    env: dict[str, str]
    ports: dict[str, int]
    nats_port: int
    calls: list[dict[str, Any]]
    """The calls the stub service behind the workflow's step received."""
    output: list[str] = field(default_factory=list)
    drainer: asyncio.Task[None] | None = None

    @property
    def nats_url(self) -> str:
        # The operator's credentials, as the `nexus` commands read them from the data directory.
        password = load_credentials(Path(self.env["NEXUS_DATA_DIR"]) / "nats")["users"]["operator"]
        return f"nats://operator:{password}@127.0.0.1:{self.nats_port}"

    @property
    def workflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['workflow']}"

    async def client_key(self) -> str:
        """A client key, issued from the command line against the same data directory."""
        code, out, err = await nexus("keys", "create", "--client", "e2e", env=self.env)
        assert code == 0, err
        first, key = out.splitlines()[:2]
        assert "e2e" in first and key.strip()
        return key.strip()

    async def register(self, key: str, *documents: tuple[str, str]) -> None:
        async with aiohttp.ClientSession(headers={"x-service-key": key}) as http:
            for path, document in documents:
                async with http.post(self.workflow_url + path, data=document) as response:
                    assert response.status == 201, await response.text()


@asynccontextmanager
async def running_platform(tmp_path: Path) -> AsyncIterator[Up]:
    """``nexus up`` with free ports and its data under tmp_path, ready; killed if the test fails."""
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
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nexus.cli.main",
            "up",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        up = Up(process, env, ports, nats_port, calls)
        stdout = process.stdout
        assert stdout is not None
        try:

            async def until_ready() -> None:
                while line := await stdout.readline():
                    up.output.append(line.decode(errors="replace"))
                    if "Press Ctrl-C to stop." in up.output[-1]:
                        return
                raise AssertionError("nexus up ended before it was ready:\n" + "".join(up.output))

            try:
                await asyncio.wait_for(until_ready(), 40)
            except TimeoutError:
                raise AssertionError("nexus up not ready within 40 s:\n" + "".join(up.output)) from None

            async def drain() -> None:
                # The children's logs keep coming: read them so the pipe never blocks anyone.
                while line := await stdout.readline():
                    up.output.append(line.decode(errors="replace"))

            up.drainer = asyncio.create_task(drain())
            yield up
        finally:
            if process.returncode is None:
                # A failed test must not leave the platform running: kill what it started, then it.
                for pid in set(descendants(process.pid)):
                    os.kill(pid, signal.SIGKILL)
                process.kill()
                await process.wait()
            if up.drainer is not None and not up.drainer.done():
                up.drainer.cancel()


async def test_nexus_up_runs_a_registered_workflow_whose_events_reach_nats_then_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    async with running_platform(tmp_path) as up:
        started = set(descendants(up.process.pid))
        key = await up.client_key()
        # A downstream user's JetStream consumer on the workflow events, before anything runs.
        nc = await nats.connect(up.nats_url)
        try:
            js = nc.jetstream()
            downstream = await js.pull_subscribe("nexus.evt.workflow.>", durable="e2e-up", stream="NEXUS_EVT")
            await up.register(key, ("/schemas", SCHEMA), ("/workflows", WORKFLOW))

            run_env = {**up.env, "NEXUS_SERVICE_KEY": key}
            payload = {"title": "Quake", "confidence": 0.97, "region": "tohoku"}
            code, out, err = await nexus(
                "workflow", "run", "anomaly_job", "--input", json.dumps(payload), "--wait", env=run_env
            )
            assert code == 0, out + err
            execution_id = out.splitlines()[0].strip()
            assert "  status     COMPLETED" in out.splitlines(), out
            assert '"verdict": "confirmed: Quake"' in out
            assert up.calls == [payload]

            received: list[Any] = []

            async def until_completed() -> None:
                while True:
                    try:
                        messages = await downstream.fetch(batch=100, timeout=1)
                    except TimeoutError:  # nats-py raises its own subclass or the builtin one
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
        up.process.send_signal(signal.SIGINT)
        status = await within(up.process.wait(), "nexus up stopping after SIGINT", 8)
        elapsed = time.monotonic() - stop_started
        assert up.drainer is not None
        await within(up.drainer, "the end of nexus up's output", 5)
        output = "".join(up.output)
        assert status == 0, output
        assert elapsed < 5.0, output
        assert "Nexus stopped." in output
        assert [pid for pid in started if alive(pid)] == []
        assert not any(listening(port) for port in (up.nats_port, *up.ports.values()))


async def test_under_nexus_up_an_external_event_starts_its_workflow_through_a_trigger(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as up:
        key = await up.client_key()
        await up.register(key, ("/schemas", SCHEMA), ("/workflows", WORKFLOW), ("/triggers", TRIGGER))
        # The detector gets its own NATS credential, bound to client e2e: its events are e2e's.
        code, out, err = await nexus("keys", "create", "--producer", "gaia", "--tenant", "e2e", env=up.env)
        assert code == 0, err
        producer = dict(line.split(": ", 1) for line in out.splitlines()[1:])
        nc = await nats.connect(up.nats_url)
        detector = await nats.connect(
            f"nats://127.0.0.1:{up.nats_port}",
            user=producer["user"],
            password=producer["password"],
            inbox_prefix=producer["inbox prefix"],
        )
        try:
            completed = await nc.subscribe("nexus.evt.workflow.execution.completed")
            js = nc.jetstream()
            quake = anomaly("Quake")
            await detector.jetstream().publish("nexus.ext.gaia.anomaly", json.dumps(quake).encode())
            try:
                message = await completed.next_msg(timeout=6)
            except TimeoutError:  # nats-py raises its own subclass or the builtin one
                consumers = [c.name for c in await js.consumers_info("NEXUS_EXT")]
                raise AssertionError(
                    f"no execution completed within 6 s of an external event; NEXUS_EXT consumers: {consumers}"
                ) from None
        finally:
            await detector.close()
            await nc.close()
        assert json.loads(message.data)["data"]["output"] == {"verdict": "confirmed: Quake"}
        assert up.calls == [{"title": "Quake", "confidence": 0.97, "region": "tohoku"}]
