"""``nexus up`` as a process for the end-to-end tests: free ports, data under tmp_path, killed if a test fails."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from e2e_platform import stub_app
from processes import descendants, free_port

from nexus.bus.embedded import load_credentials

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

    @property
    def kam_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['kam']}"

    @property
    def admin_password(self) -> str:
        """The bootstrap admin's password (login name ``admin``), set through the environment."""
        return self.env["NEXUS_ADMIN_PASSWORD"]

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
            "NEXUS_RELAY_PORT": str(free_port()),
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
