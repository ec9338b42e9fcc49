"""Fixtures of the workflow engine tests: a stub HTTP service that counts requests and effects per
Idempotency-Key, and the workflow service itself on a memory (or SQLite) log and a memory bus."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nexus.auth import issue_key
from nexus.bus import Bus
from nexus.bus.memory import MemoryBus
from nexus.eventlog import EventLog, open_event_log
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.granulator import bootstrap as granulator_bootstrap
from nexus.services.granulator import load_settings as granulator_settings
from nexus.services.workflow.bootstrap import bootstrap
from nexus.services.workflow.context import CTX_KEY
from nexus.services.workflow.settings import load_settings


@dataclass
class Stub:
    """A service steps call. Paths:

    ``/echo``: answers ``{"echo": body}``; ``/effect``: applies an effect once per Idempotency-Key
    (a retried key gets the first answer back); ``/flaky/{n}``: 503 for the first n requests of a
    key, then like ``/effect``; ``/status/{code}``: answers that status; ``/slow/{ms}``: waits, then
    like ``/effect``; ``/blobs/{blob_id}``: a GET answering the blob; ``/hold``: waits until released.
    """

    url: str = ""
    requests: Counter[str] = field(default_factory=Counter)
    """Requests per Idempotency-Key."""
    effects: Counter[str] = field(default_factory=Counter)
    """Effects applied per Idempotency-Key (exactly-once means 1 each)."""
    answers: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def effect(self, key: str, body: Any, path: str) -> Any:
        if key not in self.answers:
            self.effects[key] += 1
            self.answers[key] = {"applied": key, "body": body, "path": path, "n": len(self.answers) + 1}
        return self.answers[key]


async def _stub_app(stub: Stub) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        stub.requests[key] += 1
        raw = await request.read()
        body = json.loads(raw) if raw else None
        path = request.path
        stub.log.append(
            {
                "path": path,
                "method": request.method,
                "key": key,
                "body": body,
                "traceparent": request.headers.get("traceparent"),
                "authorization": request.headers.get("Authorization"),
                "worker_id": request.headers.get("X-Worker-ID"),
            }
        )
        parts = path.strip("/").split("/")
        if parts[0] == "echo":
            return web.json_response({"echo": body})
        if parts[0] == "effect":
            return web.json_response(stub.effect(key, body, path))
        if parts[0] == "flaky":
            if stub.requests[key] <= int(parts[1]):
                return web.json_response({"error": "busy"}, status=503)
            return web.json_response(stub.effect(key, body, path))
        if parts[0] == "status":
            return web.json_response({"error": f"status {parts[1]}"}, status=int(parts[1]))
        if parts[0] == "slow":
            await asyncio.sleep(int(parts[1]) / 1000)
            return web.json_response(stub.effect(key, body, path))
        if parts[0] == "hold":
            await stub.release.wait()
            return web.json_response(stub.effect(key, body, path))
        if parts[0] == "blobs" and request.method == "GET":
            return web.json_response({"content": f"text of {parts[1]}", "metadata": {"chapter_number": 3}})
        if parts[0] == "blobs" and request.method == "POST":
            saved = stub.effect(key, body, path)
            return web.json_response({"id": f"blob-{saved['n']}", "deltas": [{"op": "expand", "parent": body}]})
        if parts[0] == "consistency":
            return web.json_response({"score": 0.92, "issues": []})
        return web.json_response({"error": "no such stub path"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    """The stub service on a free port."""
    state = Stub()
    runner = web.AppRunner(await _stub_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    state.release.set()
    await runner.cleanup()


@dataclass
class Running:
    """A started workflow service and a client for it."""

    service: Service
    http: aiohttp.ClientSession
    """Sends the client API key ``key`` with every request."""
    url: str
    key: str = ""

    @property
    def ctx(self) -> Any:
        return self.service.app[CTX_KEY]

    async def post(self, path: str, body: Any = None, *, data: Any = None) -> tuple[int, Any]:
        async with self.http.post(self.url + path, json=body if data is None else None, data=data) as r:
            return r.status, await r.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path) as r:
            return r.status, await r.json()

    async def wait_final(self, execution_id: str, timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            async for state in self.ctx.engine.watch(execution_id):
                if state.final:
                    return state
        return None


ServiceFactory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def workflow_service(tmp_path: Path, stub: Stub) -> AsyncIterator[ServiceFactory]:
    """Start workflow services (several may share one log: replicas) with the stub as service ``stub``.

    ``modules=True`` installs the optional modules too (job API, uploads, triggers, phases, live);
    ``bus`` replaces the memory bus (a JetStreamBus, for triggers fed by the relay).
    """
    started: list[Running] = []

    async def start(
        log: EventLog | None = None, *, modules: bool = False, bus: Bus | None = None, **env: str
    ) -> Running:
        environment = {
            "NEXUS_WORKFLOW_PORT": "0",
            "NEXUS_DATA_DIR": str(tmp_path),
            "NEXUS_WORKFLOW_BUNDLED": "none",
            "NEXUS_SERVICE_STUB": stub.url,
            "NEXUS_WORKFLOW_LEASE_SECONDS": "2",
            **env,
        }
        settings = load_settings(environment)
        if bus is None:
            bus = MemoryBus()
            await bus.ensure_streams()
        service = await bootstrap(
            settings, log=log or MemoryEventLog(), bus=bus, raw=MemoryRaw(), optional_modules=modules
        )
        await service.start()
        # Every workflow route needs a client API key: issue one in the service's log.
        key = await issue_key(service.log, "client", "workflow-tests")
        http = aiohttp.ClientSession(headers={"x-service-key": key.secret})
        running = Running(service, http, f"http://127.0.0.1:{service.port}", key.secret)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.http.close()
        await running.service.stop()


@dataclass
class RunningGranulator:
    """A real granulator service (default settings: ``/generate`` needs a worker token)."""

    service: Service
    log: EventLog
    port: int
    log_url: str

    async def open_log(self) -> EventLog:
        """Another connection to the granulator's log (a workflow service closes its own at stop)."""
        return await open_event_log(self.log_url)


@pytest.fixture
async def granulator(tmp_path: Path) -> AsyncIterator[RunningGranulator]:
    """The granulator on a free port over a SQLite log that workflow services share (``open_log``)."""
    log_url = f"sqlite:///{tmp_path / 'shared-events.db'}"
    log = await open_event_log(log_url)
    bus = MemoryBus()
    await bus.ensure_streams()
    settings = granulator_settings(
        {
            "NEXUS_GRANULATOR_PORT": "0",
            "NEXUS_DATA_DIR": str(tmp_path / "granulator"),
            "NEXUS_GRANULATOR_REPLICA_ID": "g",
        }
    )
    assert settings.generate_auth == "worker"
    service = await granulator_bootstrap(settings, log=log, bus=bus, raw=MemoryRaw())
    await service.start()
    assert service.port is not None
    yield RunningGranulator(service, service.log, service.port, log_url)
    await service.stop()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:  # noqa: ASYNC109
    """Wait (polling) until ``predicate()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture
def until() -> Callable[..., Awaitable[None]]:
    """``await until(lambda: ..., timeout=…)``: poll until a predicate holds."""
    return _until
