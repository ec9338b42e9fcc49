"""Nexus as a fleet of replica processes on one shared PostgreSQL log, for the kill test.

``Fleet`` starts what an operator scaling out runs by hand: a three-node JetStream cluster
(``EmbeddedNatsCluster``), and ``python -m nexus.services.<name>`` or ``python -m nexus.relay``
processes, each with its own port, data directory and NATS identity (the password passed in the
environment, as ``nexus up`` does), all given every node's URL, three stream replicas, and the
same ``NEXUS_EVENT_LOG_URL`` and ``NEXUS_RAW_URL``. Each process can be killed with SIGKILL and
started again under the same name (a workflow or granulator replica keeps its replica id, so
it takes its own unfinished work back at once). ``IdempotentStub`` is the HTTP service behind
the workflow's ``api_call`` steps: it applies a request's effect once per ``Idempotency-Key``,
answers a repeated key with the first answer, and counts what it received; it is also the
granulator's chat-completions endpoint, counting the generations asked for per prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from processes import free_port

from nexus.bus.embedded import EmbeddedNatsCluster

READY_WITHIN = 60.0
"""Seconds a process may take to answer /readyz 200 (six Python processes start at once on 2 cores)."""


class IdempotentStub:
    """An HTTP service that honours ``Idempotency-Key``: one effect per key, repeats answered alike."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        """Requests per Idempotency-Key (a repeat is a retry or a replica's take-over)."""
        self.applied: dict[str, Any] = {}
        """The effect of each key, applied on its first request: the request's body."""
        self.missing_key = 0
        """Requests without a key (each would be an effect nobody can deduplicate)."""
        self.completions: Counter[str] = Counter()
        """Chat completions asked for, per prompt: the granulator's generator (an OpenAI-compatible
        API takes no idempotency key, so each call is an effect of its own)."""
        self.completion_times: dict[str, list[float]] = {}
        """When each prompt was asked for (``time.monotonic()``), in order."""
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            key = request.headers.get("Idempotency-Key", "")
            if not key:
                self.missing_key += 1
                return web.json_response({"error": "Idempotency-Key is required"}, status=400)
            self.received[key] += 1
            if key not in self.applied:
                self.applied[key] = body
            return web.json_response({"applied": self.applied[key], "key": key})

        async def complete(request: web.Request) -> web.Response:
            body = await request.json()
            prompt = body["messages"][-1]["content"]
            self.completions[prompt] += 1
            self.completion_times.setdefault(prompt, []).append(time.monotonic())
            text = f"An expansion of: {prompt}"
            return web.json_response(
                {"model": body.get("model", ""), "choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
            )

        app = web.Application()
        app.router.add_post("/step", handle)
        app.router.add_post("/v1/chat/completions", complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Replica:
    """One service process: its module, identity, port and environment; started, killed, started again."""

    name: str
    """A unique name (``workflow-a``): the replica id and the data directory's name."""
    module: str
    """``nexus.services.workflow``, ``nexus.relay`` …"""
    identity: str
    """The NATS identity it connects as (``workflow``, ``relay`` …)."""
    env: dict[str, str]
    port: int
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    kills: list[int] = field(default_factory=list)
    """The pids killed with SIGKILL."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, env=self.env, stdout=out, stderr=out
            )

    async def wait_ready(self, http: aiohttp.ClientSession, seconds: float = READY_WITHIN) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            if loop.time() > deadline:
                raise AssertionError(f"{self.name} not ready within {seconds:g} s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown hook runs, nothing is released."""
        assert self.process is not None and self.process.returncode is None, f"{self.name} is not running"
        self.kills.append(self.process.pid)
        os.kill(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 8)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""


class Fleet:
    """The NATS cluster's URLs and credentials, and the replica processes started on them."""

    def __init__(self, root: Path, cluster: EmbeddedNatsCluster, log_url: str, raw_url: str) -> None:
        self.root = root
        self.cluster = cluster
        self.urls = list(cluster.urls)
        """Every node's URL, taken while all three run: a process is given all of them, always."""
        self.log_url = log_url
        self.raw_url = raw_url
        self.replicas: dict[str, Replica] = {}
        self.failed_starts: list[str] = []
        """Starts that ended in an exit and were tried again, as ``name: last log line``."""

    def add(self, name: str, module: str, identity: str, extra: dict[str, str] | None = None) -> Replica:
        port = free_port()
        service = module.rsplit(".", 1)[1]
        data_dir = self.root / "data" / name
        data_dir.mkdir(parents=True, exist_ok=True)
        user, password = self.cluster.credentials(identity)
        env = {
            **os.environ,
            "NEXUS_DATA_DIR": str(data_dir),
            "NEXUS_NATS_URL": ",".join(self.urls),
            "NEXUS_NATS_USER": user,
            "NEXUS_NATS_PASSWORD": password,
            "NEXUS_NATS_REPLICAS": str(self.cluster.replicas),
            "NEXUS_EVENT_LOG_URL": self.log_url,
            "NEXUS_RAW_URL": self.raw_url,
            f"NEXUS_{service.upper()}_PORT": str(port),
            "NEXUS_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
            **(extra or {}),
        }
        env.pop("NEXUS_NATS_CLUSTER", None)
        replica = Replica(name, module, identity, env, port, self.root / f"{name}.log")
        self.replicas[name] = replica
        return replica

    async def start(self, replica: Replica, http: aiohttp.ClientSession, attempts: int = 5) -> None:
        """Start ``replica`` and wait until it is ready, as a supervisor does (``nexus up``, an orchestrator).

        A process that exits while starting (JetStream still electing the leaders of a killed
        node's streams, say) is started again, up to ``attempts`` times; each such exit is
        recorded in ``failed_starts``. A process that runs but is never ready fails at once.
        """
        for _ in range(attempts):
            await replica.start()
            try:
                await replica.wait_ready(http)
                return
            except AssertionError as exc:
                if replica.process is None or replica.process.returncode is None:
                    raise
                self.failed_starts.append(f"{replica.name}: {str(exc).splitlines()[-1][:200]}")
                await asyncio.sleep(0.5)
        raise AssertionError(f"{replica.name} did not start in {attempts} attempts: {self.failed_starts}")

    async def start_all(self, http: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self.start(r, http) for r in self.replicas.values()))

    async def stop_all(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas.values()), return_exceptions=True)
