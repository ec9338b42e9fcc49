"""The studio and the workflow service in one process, for the providers, triggers and transformer tests.

Both share one in-memory log, bus and Raw (``tests/inprocess.py``); the providers' test
workflows call a stub service (``service: stub``) whose answer is the workflow's output (the
output of the last step), chosen by the test per workflow. Blobs are written through the
studio's own ``Blobs`` API, as its routes do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from inprocess import SharedBus, SharedLog, SharedRaw, build

from nexus.auth import issue_key
from nexus.ingest import send_command
from nexus.runtime import Service
from nexus.services.studio.blobs import Blobs
from nexus.services.studio.context import StudioContext
from nexus.services.studio.state import StudioState
from nexus.services.studio.transformer import TRANSFORMER, Transformer
from nexus.services.studio.triggers import TRIGGERS, Triggers

ALPHA, BETA = "alpha", "beta"


@dataclass
class Stub:
    """``POST /out/<workflow>`` answers ``outputs[workflow]`` (the run's output); ``/hold`` waits."""

    url: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    calls: list[Any] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.calls.append((request.path, body))
        name = request.path.strip("/").removeprefix("out/")
        if name == "hold":
            await self.release.wait()
        return web.json_response(self.outputs.get(name, {}))


def workflow(workflow_id: str) -> dict[str, Any]:
    """A workflow of one step calling the stub; its output is the stub's answer for ``workflow_id``."""
    return {
        "id": workflow_id,
        "steps": [
            {
                "id": "work",
                "type": "api_call",
                "service": "stub",
                "endpoint": f"/out/{workflow_id}",
                "method": "POST",
                "input_map": {"blob_id": "$.input.blob_id", "metadata": "$.input.metadata"},
                "retry": {"max_attempts": 1},
                "timeout_seconds": 30,
            }
        ],
    }


WORKFLOWS = ("wf_delta", "wf_other", "wf_ping", "wf_pong", "hold")


def provider(
    provider_id: str, workflow_id: str, event: str = "onCreate", *conditions: dict[str, Any], priority: int = 20
) -> dict[str, Any]:
    """A provider document (seed 004's shape) running ``workflow_id`` on ``event`` when ``conditions`` hold."""
    return {
        "provider": {"id": provider_id, "name": provider_id.title(), "type": "processor"},
        "workflows": [
            {
                "workflow_id": workflow_id,
                "triggers": [{"event": event, "conditions": list(conditions)}],
                "priority": priority,
            }
        ],
    }


def eq(field_name: str, value: Any) -> dict[str, Any]:
    return {"field": field_name, "operator": "eq", "value": value}


@dataclass
class Platform:
    """One test's platform: studio replicas and the workflow service on one log, bus and Raw."""

    tmp_path: Path
    log: SharedLog
    bus: SharedBus
    raw: SharedRaw
    stub: Stub
    workflow: Service | None = None
    studios: list[Service] = field(default_factory=list)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None

    @property
    def studio(self) -> Service:
        return self.studios[0]

    def ctx(self, index: int = 0) -> StudioContext:
        triggers = self.studios[index].app[TRIGGERS]
        return triggers.ctx

    def state(self, index: int = 0) -> StudioState:
        return self.ctx(index).state

    def triggers(self, index: int = 0) -> Triggers:
        return self.studios[index].app[TRIGGERS]

    def transformer(self, index: int = 0) -> Transformer:
        return self.studios[index].app[TRANSFORMER]

    def blobs(self, index: int = 0) -> Blobs:
        return Blobs(self.ctx(index))

    async def start_studio(self, **env: str) -> Service:
        studio = await build("studio", self.tmp_path, log=self.log, bus=self.bus, raw=self.raw, **env)
        await studio.start()
        self.studios.append(studio)
        return studio

    async def stop_studio(self, studio: Service) -> None:
        await studio.stop()
        self.studios.remove(studio)

    def url(self, service: Service | None = None) -> str:
        return f"http://127.0.0.1:{(service or self.studio).port}"

    async def call(
        self, method: str, path: str, who: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        assert self.http is not None
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with self.http.request(method, self.url() + path, data=data, headers=self.headers[who]) as response:
            text = await response.read()
            try:
                return response.status, json.loads(text) if text else None
            except ValueError:
                return response.status, text

    async def register(self, document: dict[str, Any], who: str = "admin") -> None:
        status, body = await self.call("POST", "/providers", who, document)
        assert status == 201, body

    async def blob(self, owner: str = ALPHA, content: Any = None, **metadata: Any) -> str:
        """A JSON blob of ``owner`` (``metadata.type`` draft unless given), written as the routes write."""
        document = {"text": "It was a dark night."} if content is None else content
        blob = await self.blobs().create(owner, "key:test", document, "application/json", {"type": "draft", **metadata})
        return blob.blob_id


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll until ``predicate()`` holds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - polls a condition
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {timeout} s") from None


async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    """The stub, the workflow service (the test workflows registered), one studio, keys for
    clients alpha and beta and an admin."""
    stub = Stub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stub.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    bus = SharedBus()
    await bus.ensure_streams()
    env = Platform(tmp_path, SharedLog(), bus, SharedRaw(), stub)
    try:
        env.workflow = await build(
            "workflow",
            tmp_path,
            log=env.log,
            bus=env.bus,
            raw=env.raw,
            NEXUS_WORKFLOW_BUNDLED="none",
            NEXUS_SERVICE_STUB=stub.url,
        )
        await env.workflow.start()
        for workflow_id in WORKFLOWS:
            document = workflow(workflow_id)
            reply = await send_command(
                env.bus, "workflow", "register", {"kind": "workflow", "document": document}, source="test"
            )
            assert reply.get("id") == workflow_id, reply
        keys = {
            ALPHA: await issue_key(env.log, "client", ALPHA),
            BETA: await issue_key(env.log, "client", BETA),
            "admin": await issue_key(env.log, "client", "ops", scopes=("admin",)),
        }
        env.headers = {name: {"X-API-Key": key.secret} for name, key in keys.items()}
        await env.start_studio()
        env.http = aiohttp.ClientSession()
        yield env
    finally:
        if env.http is not None:
            await env.http.close()
        stub.release.set()
        for studio in list(env.studios):
            await studio.stop()
        if env.workflow is not None:
            await env.workflow.stop()
        await runner.cleanup()
