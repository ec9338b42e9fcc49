"""The AI factory in one process for KAM's execution, cost and notification tests.

KAM and the workflow service share one in-memory log, bus and Raw (``tests/inprocess.py``); the
templates' workflows call a stub service (``service: stub``) whose answers the tests choose. The
clients, templates and requests are recorded by appending their events, as the accounts and
request routes would, so these tests depend only on the fold.
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
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import send_command
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.kam import (
    KamClientCreated,
    KamRequestCreated,
    KamTemplateAssigned,
    KamTemplateRegistered,
)
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.kam.context import KamContext
from nexus.services.kam.delivery import KAM_CONTEXT
from nexus.services.kam.state import (
    ACCOUNTS_STREAM,
    CLIENT_CREATED,
    REQUEST_CREATED,
    TEMPLATE_ASSIGNED,
    TEMPLATE_REGISTERED,
    TEMPLATES_STREAM,
    request_stream,
)

ALPHA, BETA = "alpha", "beta"

COST = {"per_run": 0.5, "per_1k_tokens": 0.02, "per_stage": 0.1, "currency": "USD"}

DRAFT_TEXT = "Tea is a drink made from the leaves of Camellia sinensis " * 3
"""The draft step's text: 33 words, no token count (the tokens are estimated)."""
FINAL_TOKENS = 120


@dataclass
class Stub:
    """The service the test workflows call: ``/draft`` (text, no token count), ``/final`` (a report
    with ``tokens_used`` and whatever ``attachments`` the test puts there), ``/hold`` (waits for
    ``release``), ``/status/<code>`` (answers that status)."""

    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    attachments: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path.strip("/")
        self.calls.append(path)
        if path == "draft":
            return web.json_response({"text": DRAFT_TEXT})
        if path == "final":
            body = await request.json() if request.can_read_body else None
            return web.json_response(
                {
                    "report": "A report on tea.",
                    "tokens_used": FINAL_TOKENS,
                    "attachments": list(self.attachments),
                    "seen": body,
                }
            )
        if path == "hold":
            await self.release.wait()
            return web.json_response({"usage": {"total_tokens": 7}})
        if path.startswith("status/"):
            code = int(path.split("/", 1)[1])
            return web.json_response({"error": f"status {code}"}, status=code)
        return web.json_response({"error": "no such path"}, status=404)


def workflow(workflow_id: str, *endpoints: str) -> dict[str, Any]:
    """A platform workflow calling the stub's ``endpoints`` in turn; its output names the last
    step's report and attachments."""
    steps = [
        {
            "id": f"s{i}",
            "type": "api_call",
            "service": "stub",
            "endpoint": endpoint,
            "method": "POST",
            "retry": {"max_attempts": 1},
            "timeout_seconds": 30,
        }
        for i, endpoint in enumerate(endpoints)
    ]
    last = f"s{len(endpoints) - 1}"
    return {
        "id": workflow_id,
        "steps": steps,
        "output": {
            "title": "$.input.context.request.title",
            "report": f"$.steps.{last}.output.report",
            "attachments": f"$.steps.{last}.output.attachments",
        },
    }


WORKFLOWS = {
    "kam_report": workflow("kam_report", "/draft", "/final"),
    "kam_fails": workflow("kam_fails", "/draft", "/status/400"),
    "kam_held": workflow("kam_held", "/hold", "/final"),
}


def template(template_id: str, workflow_id: str, **extra: Any) -> dict[str, Any]:
    """A template document as KAM registers it."""
    return {
        "id": template_id,
        "name": f"{template_id}_pipeline",
        "tier": "standard",
        "description": f"Runs {workflow_id}",
        "workflow_id": workflow_id,
        "stages": [{"name": "draft"}, {"name": "final"}],
        "parameters": {"type": "object", "properties": {"depth": {"type": "string", "default": "detailed"}}},
        "cost": dict(COST),
        "deliverable": {"type": "report", "content_type": "application/json"},
        "resources": {"max_workers": 3, "timeout_ms": 120000},
        **extra,
    }


@dataclass
class Factory:
    """The platform of one test: KAM replicas and the workflow service on one log, bus and Raw."""

    tmp_path: Path
    log: MemoryEventLog
    bus: Any
    raw: MemoryRaw
    stub: Stub
    workflow: Service | None = None
    kams: list[Service] = field(default_factory=list)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None

    @property
    def kam(self) -> Service:
        return self.kams[0]

    def ctx(self, index: int = 0) -> KamContext:
        return self.kams[index].app[KAM_CONTEXT]

    def url(self, service: Service | None = None) -> str:
        return f"http://127.0.0.1:{(service or self.kam).port}"

    async def start_kam(self, **env: str) -> Service:
        """One more KAM replica on the shared log, bus and Raw."""
        kam = await build("kam", self.tmp_path, log=self.log, bus=self.bus, raw=self.raw, **env)
        await kam.start()
        self.kams.append(kam)
        return kam

    async def stop_kam(self, kam: Service) -> None:
        await kam.stop()
        self.kams.remove(kam)

    async def append(self, stream: str, type_: str, data: Any, *, tenant: str | None = None) -> CloudEvent:
        """Append one KAM event and wait until every running replica has folded it."""
        [stored] = await self.log.append(stream, [new_event(type_, data, source="test", tenant=tenant)])
        for index in range(len(self.kams)):
            await self.ctx(index).caught_up(stored.position or 0)
        return stored

    async def add_template(self, document: dict[str, Any]) -> None:
        await self.append(TEMPLATES_STREAM, TEMPLATE_REGISTERED, KamTemplateRegistered(template=document))

    async def add_request(self, client: str, template_id: str | None, *, title: str = "Tea market") -> str:
        """A request of ``client``, assigned ``template_id`` when given."""
        request_id = f"req-{len(self.ctx().state.requests) + 1}-{client}"
        created = KamRequestCreated(
            request_id=request_id, client_id=client, created_by="user:t", title=title, category="research"
        )
        await self.append(request_stream(request_id), REQUEST_CREATED, created, tenant=client)
        if template_id is not None:
            assigned = KamTemplateAssigned(
                request_id=request_id, template_id=template_id, template_name=f"{template_id}_pipeline"
            )
            await self.append(request_stream(request_id), TEMPLATE_ASSIGNED, assigned, tenant=client)
        return request_id

    async def call(
        self, method: str, path: str, who: str, body: Any = None, *, service: Service | None = None
    ) -> tuple[int, Any]:
        """``method path`` on KAM (or ``service``) as ``who`` (a key of ``headers``)."""
        assert self.http is not None
        data = None if body is None else (body if isinstance(body, bytes | str) else json.dumps(body))
        async with self.http.request(
            method, self.url(service) + path, data=data, headers=self.headers[who]
        ) as response:
            raw = await response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw

    async def until_status(self, request_id: str, *statuses: str, index: int = 0, timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Wait until replica ``index`` has the request in one of ``statuses``."""
        state = self.ctx(index).state
        async with asyncio.timeout(timeout):
            while state.requests[request_id].status not in statuses:  # noqa: ASYNC110 - polls the fold
                await asyncio.sleep(0.01)
        return state.requests[request_id]


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll until ``predicate()`` holds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - polls a condition
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {timeout} s") from None


async def factory(tmp_path: Path, *, with_workflow: bool = True) -> AsyncIterator[Factory]:
    """The platform: the stub, the workflow service (its test workflows registered), one KAM,
    clients alpha and beta with a key each, an admin key and a worker token."""
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
    platform = Factory(tmp_path, SharedLog(), bus, SharedRaw(), stub)
    try:
        if with_workflow:
            platform.workflow = await build(
                "workflow",
                tmp_path,
                log=platform.log,
                bus=platform.bus,
                raw=platform.raw,
                NEXUS_WORKFLOW_BUNDLED="none",
                NEXUS_SERVICE_STUB=stub.url,
            )
            await platform.workflow.start()
            for document in WORKFLOWS.values():
                reply = await send_command(
                    platform.bus, "workflow", "register", {"kind": "workflow", "document": document}, source="test"
                )
                assert reply.get("id") == document["id"], reply
        for client in (ALPHA, BETA):
            created = KamClientCreated(client_id=client, name=client.title())
            await platform.log.append(ACCOUNTS_STREAM, [new_event(CLIENT_CREATED, created, source="test")])
        keys = {
            ALPHA: await issue_key(platform.log, "client", ALPHA),
            BETA: await issue_key(platform.log, "client", BETA),
            "admin": await issue_key(platform.log, "client", "ops", scopes=("admin",)),
            "worker": await issue_key(platform.log, "worker", "orchestrator"),
        }
        platform.headers = {
            name: (
                {"Authorization": f"Bearer {key.secret}", "X-Worker-ID": "orchestrator"}
                if name == "worker"
                else {"X-API-Key": key.secret}
            )
            for name, key in keys.items()
        }
        await platform.start_kam()
        await platform.add_template(template("report", "kam_report"))
        platform.http = aiohttp.ClientSession()
        yield platform
    finally:
        if platform.http is not None:
            await platform.http.close()
        stub.release.set()
        for kam in list(platform.kams):
            await kam.stop()
        if platform.workflow is not None:
            await platform.workflow.stop()
        await runner.cleanup()
