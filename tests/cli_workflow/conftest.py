"""Fixtures of the command-line tests: a real workflow service (aiohttp on port 0, memory log and
bus) with an echo service behind its steps, and a client API key issued in its log."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.cli.main import main
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.workflow.bootstrap import bootstrap
from nexus.services.workflow.settings import load_settings


@dataclass
class WorkflowApp:
    service: Service
    url: str
    key: str


@dataclass
class Result:
    code: int
    out: str
    err: str


async def _echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("fail"):
            return web.json_response({"error": "refused"}, status=422)
        return web.json_response({"echo": body})

    app = web.Application()
    app.router.add_post("/echo", echo)
    return app


@pytest.fixture
async def workflow_app(tmp_path: Path) -> AsyncIterator[WorkflowApp]:
    async with TestServer(await _echo_app(), host="127.0.0.1", port=0) as echo:
        settings = load_settings(
            {
                "NEXUS_WORKFLOW_PORT": "0",
                "NEXUS_DATA_DIR": str(tmp_path),
                "NEXUS_WORKFLOW_BUNDLED": "none",
                "NEXUS_SERVICE_ECHO": str(echo.make_url("")).rstrip("/"),
            }
        )
        bus = MemoryBus()
        await bus.ensure_streams()
        service = await bootstrap(settings, log=MemoryEventLog(), bus=bus, raw=MemoryRaw(), optional_modules=False)
        await service.start()
        key = await issue_key(service.log, "client", "cli-tests")
        try:
            yield WorkflowApp(service, f"http://127.0.0.1:{service.port}", key.secret)
        finally:
            await service.stop()


Runner = Callable[..., Coroutine[Any, Any, Result]]


@pytest.fixture
def nexus(monkeypatch: pytest.MonkeyPatch) -> Runner:
    """``await nexus("workflow", "run", …, env={…})``: the ``nexus`` command in a thread (it runs its
    own event loop), its exit status and what it printed."""
    lock = asyncio.Lock()

    async def run(*argv: str, env: dict[str, str] | None = None) -> Result:
        async with lock:
            for name in ("NEXUS_WORKFLOW_URL", "NEXUS_WORKFLOW_PORT", "NEXUS_SERVICE_KEY"):
                monkeypatch.delenv(name, raising=False)
            for name, value in (env or {}).items():
                monkeypatch.setenv(name, value)
            out, err = io.StringIO(), io.StringIO()

            def call() -> int:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    return main(list(argv))

            code = await asyncio.to_thread(call)
            return Result(code, out.getvalue(), err.getvalue())

    assert sys.version_info >= (3, 11)
    return run
