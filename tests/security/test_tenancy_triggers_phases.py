"""Issue 9, findings 2 and 10: triggers, phase users and live updates belong to a tenant, and a
trigger chain or a hot trigger stops.

A workflow service (every optional module, on the service's own route decorator) over a memory
log; triggers follow the log. Steps call a stub service; the phases' ``core`` work is the stub's
``/generate``. Clients ``acme`` and ``rival`` have their own keys; ``ops`` has an admin key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import new_event
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.workflow import api
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.engine import WorkflowEngine
from nexus.services.workflow.registry import WorkflowRegistry
from nexus.services.workflow.settings import load_settings
from nexus.services.workflow.triggers import TRIGGER_ENGINE, fired_stream
from nexus.services.workflow.view import ExecutionView

ACME, RIVAL = "acme", "rival"


@dataclass
class Platform:
    url: str
    log: MemoryEventLog
    engine: WorkflowEngine
    service: Service
    keys: dict[str, str]
    """Tenant → its client key (``ops``: an admin key)."""

    def headers(self, tenant: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[tenant]}

    async def call(self, tenant: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers=self.headers(tenant)) as http:
            data = body if isinstance(body, str) else None
            payload = None if isinstance(body, str) else body
            async with http.request(method, self.url + path, json=payload, data=data) as r:
                return r.status, await r.json(content_type=None)


async def _stub() -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        return web.json_response({"text": "a report"})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/generate", generate)
    app.router.add_post("/echo", echo)
    return app


Starter = Callable[..., Awaitable[Platform]]


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Starter]:
    """``await platform(**env)``: the platform, with ``NEXUS_TRIGGER_*`` settings from ``env``."""
    cleanup: list[Callable[[], Awaitable[None]]] = []

    async def start(**env: str) -> Platform:
        stub = TestServer(await _stub(), host="127.0.0.1", port=0)
        await stub.start_server()
        cleanup.append(stub.close)
        stub_url = str(stub.make_url("")).rstrip("/")
        settings = load_settings(
            {"NEXUS_SERVICE_STUB": stub_url, "NEXUS_SERVICE_CORE": stub_url, "NEXUS_DATA_DIR": str(tmp_path), **env}
        )
        log = MemoryEventLog()
        registry = WorkflowRegistry(log, settings.services)
        view = ExecutionView(log)
        view.add_listener(registry.apply)
        await view.load()
        view.start_tail()
        engine = WorkflowEngine(log, registry, view, services=settings.services, concurrency=64)
        await engine.start_processing()
        ctx = WorkflowContext(
            settings=settings, log=log, bus=None, raw=MemoryRaw(), engine=engine, registry=registry, views=view
        )
        bus = MemoryBus()
        await bus.ensure_streams()
        service = Service(settings, log=log, bus=bus)
        api.install(service, ctx)
        api.install_optional(service, ctx)
        server = TestServer(service.app, host="127.0.0.1", port=0)
        await server.start_server()

        async def stop() -> None:
            await server.close()
            await engine.stop_processing()
            await view.stop()

        cleanup.append(stop)
        keys = {t: (await issue_key(log, "client", t)).secret for t in (ACME, RIVAL)}
        keys["ops"] = (await issue_key(log, "client", "ops", scopes=("admin",))).secret
        return Platform(str(server.make_url("")).rstrip("/"), log, engine, service, keys)

    yield start
    for step in reversed(cleanup):
        await step()


def _workflow(workflow_id: str) -> dict[str, Any]:
    return {"id": workflow_id, "steps": [{"id": "a", "service": "stub", "endpoint": "/echo", "input_map": {}}]}


async def _until(predicate: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_a_client_sees_lists_and_removes_only_its_own_triggers(platform: Starter) -> None:
    p = await platform()
    for tenant in (ACME, RIVAL):
        assert (await p.call(tenant, "POST", "/workflows", _workflow(f"{tenant}_flow")))[0] == 201
    # Both clients register a trigger with the same id: two triggers, neither replaces the other.
    acme = {"id": "on_x", "event_type": "x.happened", "workflow_id": "acme_flow"}
    status, body = await p.call(ACME, "POST", "/triggers", acme)
    assert status == 201 and body["tenant"] == ACME, body
    status, body = await p.call(RIVAL, "POST", "/triggers", "id: on_x\nevent_type: y.happened\nworkflow_id: rival_flow")
    assert status == 201 and body["tenant"] == RIVAL, body
    # Rival cannot point a trigger at acme's workflow: it does not exist in rival's namespace.
    status, body = await p.call(RIVAL, "POST", "/triggers", {**acme, "id": "steal"})
    assert status == 400 and [x["path"] for x in body["problems"]] == ["$.workflow_id"], body
    # Each lists its own; the admin lists both, with their tenant.
    assert [(t["id"], t["workflow_id"]) for t in (await p.call(ACME, "GET", "/triggers"))[1]] == [("on_x", "acme_flow")]
    assert [(t["id"], t["workflow_id"]) for t in (await p.call(RIVAL, "GET", "/triggers"))[1]] == [
        ("on_x", "rival_flow")
    ]
    _, everything = await p.call("ops", "GET", "/triggers")
    clients = {(t["tenant"], t["workflow_id"]) for t in everything if t["tenant"] != "platform"}
    assert clients == {(ACME, "acme_flow"), (RIVAL, "rival_flow")}
    assert {t["id"] for t in everything if t["tenant"] == "platform"} >= {"phase_1_on_trigger"}
    # Rival's DELETE removes rival's trigger only; acme's stays, and a second DELETE is a 404.
    assert await p.call(RIVAL, "DELETE", "/triggers/on_x") == (200, {"removed": "on_x"})
    status, body = await p.call(RIVAL, "DELETE", "/triggers/on_x")
    assert status == 404 and "on_x" in body["message"]
    assert [t["tenant"] for t in (await p.call("ops", "GET", "/triggers?tenant=rival"))[1]] == []
    assert [t["tenant"] for t in (await p.call("ops", "GET", "/triggers?tenant=acme"))[1]] == [ACME]
    # The registration records the tenant in its data and in the envelope.
    [registered] = [e for e in await p.log.read_stream("triggers") if e.data.get("workflow_id") == "acme_flow"]
    assert registered.tenant == ACME and registered.data["tenant"] == ACME
    # The OpenAPI document describes the routes' security and bodies.
    doc = p.service.openapi()
    post = doc["paths"]["/triggers"]["post"]
    assert post["security"] and post["requestBody"]["content"]["application/json"]["schema"]
    assert doc["paths"]["/api/v1/workflow/phase/{n}"]["post"]["requestBody"]
    assert doc["paths"]["/users/{user_id}/updates"]["get"]["security"]


async def test_a_clients_trigger_fires_only_on_its_own_events(platform: Starter) -> None:
    p = await platform()
    assert (await p.call(ACME, "POST", "/workflows", _workflow("acme_flow")))[0] == 201
    trigger = {"id": "on_order", "event_type": "shop.order", "workflow_id": "acme_flow", "input_map": {"n": "$.data.n"}}
    assert (await p.call(ACME, "POST", "/triggers", trigger))[0] == 201
    # Events of rival, of no tenant, and of acme, in that order.
    rivals = new_event("shop.order", {"n": 1}, source="test", tenant=RIVAL)
    nobody = new_event("shop.order", {"n": 2}, source="test")
    acmes = new_event("shop.order", {"n": 3}, source="test", tenant=ACME)
    await p.log.append("orders", [rivals, nobody, acmes])
    [state] = await _until(lambda: p.engine.list(workflow_id="acme_flow", tenant=ACME))
    assert state.input == {"n": 3} and state.tenant == ACME
    assert await p.log.stream_version(fired_stream(ACME, "on_order", acmes.id)) == 1
    for other in (rivals, nobody):
        assert await p.log.stream_version(fired_stream(ACME, "on_order", other.id)) == 0
    assert len(p.engine.list(workflow_id="acme_flow")) == 1


async def test_phase_users_audit_and_live_updates_are_per_tenant(platform: Starter) -> None:
    p = await platform()
    # Acme's user u-1 goes through a phase; rival has no u-1.
    payout = {"user_id": "u-1", "claim_id": "c-1", "amount": "10.00", "shop": "north"}
    status, body = await p.call(ACME, "POST", "/api/v1/workflow/phase/7", payout)
    assert status == 202, body
    await _until(lambda: [s for s in p.engine.list(workflow_id="phase_7", tenant=ACME) if s.status == "COMPLETED"])
    status, audit = await p.call(ACME, "GET", "/api/v1/workflow/phases/u-1/audit")
    assert status == 200 and [e["phase"] for e in audit["executions"]] == [7], audit
    assert await p.call(RIVAL, "GET", "/api/v1/workflow/phases/u-1/audit") == (
        404,
        {"success": False, "error": "no user 'u-1'", "message": "no user 'u-1'"},
    )
    # Rival cannot follow acme's user, over SSE or the WebSocket: the same 404 as for no user.
    async with aiohttp.ClientSession(headers=p.headers(RIVAL)) as http:
        for path in ("/users/u-1/updates", "/users/u-1/ws", "/users/nobody/updates"):
            async with http.get(p.url + path) as r:
                assert r.status == 404, (path, r.status)
    # Rival's own user u-1 is another user: its phase and its updates are rival's alone.
    async with aiohttp.ClientSession(headers=p.headers(ACME)) as http:
        acme_ws = await http.ws_connect(p.url + "/users/u-1/ws")
        assert (await acme_ws.receive_json())["type"] == "connected"
        rival_payout = {"user_id": "u-1", "claim_id": "c-1", "amount": "1.00"}
        assert (await p.call(RIVAL, "POST", "/api/v1/workflow/phase/7", rival_payout))[0] == 202
        status, rival_audit = await p.call(RIVAL, "GET", "/api/v1/workflow/phases/u-1/audit")
        assert status == 200 and rival_audit["auditTrail"][0]["data"]["metadata"] == {
            "claim_id": "c-1",
            "amount": "1.00",
        }
        await _until(lambda: [s for s in p.engine.list(workflow_id="phase_7", tenant=RIVAL) if s.status == "COMPLETED"])
        # Acme's socket got nothing of rival's user (a ping is answered: the socket is alive).
        await acme_ws.send_str("ping")
        assert (await acme_ws.receive_json(timeout=5))["type"] == "pong"
        await acme_ws.close()
    # The admin reads acme's user by naming the tenant, and the access is audited.
    status, admin_view = await p.call("ops", "GET", "/api/v1/workflow/phases/u-1/audit?tenant=acme")
    assert status == 200 and admin_view["executions"] == audit["executions"]
    [access] = await p.log.read_stream("audit-admin")
    assert access.data["tenant"] == ACME


async def test_a_trigger_on_its_own_workflows_completion_stops_at_depth_8(platform: Starter) -> None:
    p = await platform()
    assert (await p.call(ACME, "POST", "/workflows", _workflow("loop")))[0] == 201
    trigger = {"id": "again", "event_type": "nexus.workflow.execution.completed", "workflow_id": "loop"}
    assert (await p.call(ACME, "POST", "/triggers", {**trigger, "condition": "$.data.workflow_id == 'loop'"}))[0] == 201
    # One start by the API (depth 0); the trigger then starts the next after each completion.
    assert (await p.call(ACME, "POST", "/executions", {"workflow_id": "loop", "input": {}}))[0] == 202
    engine = p.service.app[TRIGGER_ENGINE]
    await _until(lambda: engine.refused == 1)
    await asyncio.sleep(0.3)  # nothing more starts
    executions = p.engine.list(workflow_id="loop", tenant=ACME, limit=100)
    assert len(executions) == 9 and all(s.status == "COMPLETED" for s in executions)
    depths = sorted((s.trigger or {}).get("depth", 0) for s in executions)
    assert depths == list(range(9))
    # The refusal is recorded once, naming the chain: every execution and the trigger that started it.
    [last] = [s for s in executions if (s.trigger or {}).get("depth") == 8]
    [completed] = [e for e in await p.engine.history(last.execution_id) if e.type.endswith("execution.completed")]
    [refused] = await p.log.read_stream(fired_stream(ACME, "again", completed.id))
    assert refused.type == "nexus.workflow.trigger.refused" and refused.tenant == ACME
    assert refused.data["reason"] == "depth" and refused.data["depth"] == 9
    chain = refused.data["chain"]
    assert {link["execution_id"] for link in chain} == {s.execution_id for s in executions}
    assert [link["trigger_id"] for link in chain] == [""] + ["again"] * 8
    assert "NEXUS_TRIGGER_MAX_DEPTH=8" in refused.data["message"]


async def test_a_burst_of_matching_events_starts_what_the_rate_allows_and_records_the_rest(
    platform: Starter,
) -> None:
    p = await platform(NEXUS_TRIGGER_RATE="2", NEXUS_TRIGGER_BURST="10")
    assert (await p.call(ACME, "POST", "/workflows", _workflow("hot")))[0] == 201
    assert (await p.call(ACME, "POST", "/triggers", {"id": "hot", "event_type": "x.ping", "workflow_id": "hot"}))[0]
    engine = p.service.app[TRIGGER_ENGINE]
    began = asyncio.get_running_loop().time()
    burst = [new_event("x.ping", {"i": i}, source="test", tenant=ACME) for i in range(100)]
    await p.log.append("pings", burst)
    await _until(lambda: engine.fired + engine.refused == 100)
    elapsed = asyncio.get_running_loop().time() - began
    # At most the burst plus what the rate refilled in the window; every other event is recorded.
    assert 10 <= engine.fired <= 10 + 2 * elapsed + 1, (engine.fired, elapsed)
    records = [await p.log.read_stream(fired_stream(ACME, "hot", e.id)) for e in burst]
    assert all(len(r) == 1 for r in records)
    kinds = [r[0].type.rsplit(".", 1)[-1] for r in records]
    assert kinds.count("fired") == engine.fired and kinds.count("refused") == 100 - engine.fired
    assert {r[0].data["reason"] for r in records if r[0].type.endswith("refused")} == {"rate"}
    assert len(p.engine.list(workflow_id="hot", limit=200)) == engine.fired
    assert json.dumps(records[-1][0].data)  # plain JSON, as the log stores it


async def test_triggers_registered_or_removed_later_see_an_event_type_already_seen(platform: Starter) -> None:
    # The triggers a type reaches are cached per type: registering and removing must still count.
    p = await platform()
    engine = p.service.app[TRIGGER_ENGINE]
    assert (await p.call(ACME, "POST", "/workflows", _workflow("first")))[0] == 201
    assert (await p.call(ACME, "POST", "/workflows", _workflow("second")))[0] == 201
    await p.log.append("pings", [new_event("x.seen", {}, source="test", tenant=ACME)])  # no trigger yet
    await asyncio.sleep(0.2)
    for trigger_id in ("first", "second"):
        body = {"id": trigger_id, "event_type": "x.seen", "workflow_id": trigger_id}
        assert (await p.call(ACME, "POST", "/triggers", body))[0] == 201
        await p.log.append("pings", [new_event("x.seen", {}, source="test", tenant=ACME)])
    await _until(lambda: engine.fired == 3)  # first fires twice, second once
    assert (await p.call(ACME, "DELETE", "/triggers/first"))[0] == 200
    await p.log.append("pings", [new_event("x.seen", {}, source="test", tenant=ACME)])
    await _until(lambda: engine.fired == 4)
    await asyncio.sleep(0.2)
    assert len(p.engine.list(workflow_id="first")) == 2 and len(p.engine.list(workflow_id="second")) == 2
