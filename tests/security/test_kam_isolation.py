"""KAM's isolation matrix: every route of its OpenAPI document against every credential that must fail.

KAM runs in this process on a real aiohttp server. Client ``alpha`` has a user, a request, a
deliverable, a ledger entry and a key; client ``beta`` has a user. Every route KAM declares
(under ``/api``, ``/api/kam`` and ``/v1``) is called with

- no credential, an expired session, a logged-out session, a revoked key: 401;
- a key without the route's scope: 403;
- a worker token on a client route: 403 (and a client's session on the worker route: 401);
- beta's session on alpha's resource: 404, byte for byte the answer for a resource that does
  not exist; on an admin route: 403; listings: nothing of alpha's;
- alpha's session and the admin's on what they may read: served.

Every route must have a row in ``ROWS``: a route added without one fails
``test_every_kam_route_has_a_row``, so the matrix cannot fall behind the API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from inprocess import KAM_ADMIN, build

from nexus.auth import hash_secret, issue_key, revoke_key
from nexus.proto import new_event
from nexus.proto.events.kam import KamCostRecorded, KamDeliverableRecorded, KamRequestExecuting, KamSessionOpened
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.kam.delivery import KAM_CONTEXT
from nexus.services.kam.sessions import new_session_token
from nexus.services.kam.state import LEDGER_STREAM, SESSIONS_STREAM, request_stream

ALPHA, BETA = "alpha", "beta"
PASSWORD = "correct horse battery staple"
PREFIXES = ("/api", "/api/kam")

PUBLIC = {
    ("GET", "/healthz"): "liveness probe",
    ("GET", "/readyz"): "readiness probe",
    ("GET", "/metrics"): "Prometheus scrape (no tenant data)",
    ("GET", "/openapi.json"): "the API's own description",
    ("POST", "/v1/login"): "checks a password: the credential is the body",
    ("POST", "/api/auth/login"): "checks a password: the credential is the body",
    ("POST", "/api/kam/auth/login"): "checks a password: the credential is the body",
    ("GET", "/"): "the console's page (no data: everything it shows comes from guarded calls)",
    ("GET", "/console/{name}"): "the console's modules and style sheet (no data)",
    **{
        (method, "/svc/{service}/{tail}"): (
            "the console's gateway: the service behind it checks the credential and the owner "
            "(tests/kam/test_kam_gateway.py)"
        )
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
    },
}


@dataclass
class Row:
    """How to call one route on alpha's resources.

    Attributes:
        params: Path parameter → a key of the fixture's ids.
        body: The JSON body, from the ids.
        admin_only: Only an admin may call it (a client gets 403).
        owned: beta gets 404 (the route names alpha's resource).
        lists: A listing: returns the ids it shows, so none of alpha's may be in beta's answer.
        reads: Safe to call as alpha and as the admin, who must be served.
        worker: The route takes a worker token, not a client's credential.
        caller: The route is about the caller itself (its session, its password): no one else's
            resource to reach.
    """

    params: dict[str, str] = field(default_factory=dict)
    body: Callable[[dict[str, str]], Any] | None = None
    admin_only: bool = False
    owned: bool = False
    lists: Callable[[Any], set[str]] | None = None
    reads: bool = False
    worker: bool = False
    caller: bool = False


def _ids(key: str, field_name: str) -> Callable[[Any], set[str]]:
    return lambda body: {str(item.get(field_name)) for item in body[key]}


ROWS: dict[tuple[str, str], Row] = {
    ("GET", "/v1/whoami"): Row(reads=True),
    # accounts
    ("POST", "/auth/logout"): Row(caller=True),
    ("PUT", "/auth/password"): Row(
        body=lambda ids: {"current_password": "wrong", "new_password": "x" * 20}, caller=True
    ),
    ("GET", "/auth/session"): Row(reads=True, caller=True),
    ("GET", "/clients"): Row(lists=_ids("clients", "client_id"), reads=True),
    ("POST", "/clients"): Row(body=lambda ids: {"client_id": "gamma", "name": "Gamma"}, admin_only=True),
    ("GET", "/clients/{client_id}"): Row(params={"client_id": "client"}, owned=True, reads=True),
    ("GET", "/clients/{client_id}/users"): Row(params={"client_id": "client"}, owned=True, reads=True),
    ("POST", "/clients/{client_id}/users"): Row(
        params={"client_id": "client"},
        body=lambda ids: {"username": "eve@alpha.example", "password": PASSWORD},
        admin_only=True,
        owned=True,
    ),
    ("GET", "/clients/{client_id}/keys"): Row(params={"client_id": "client"}, owned=True, reads=True),
    # A client's user manages its own client's keys (an API key never does: tests/kam/test_kam_client_keys.py).
    ("POST", "/clients/{client_id}/keys"): Row(params={"client_id": "client"}, body=lambda ids: {}, owned=True),
    ("DELETE", "/clients/{client_id}/keys/{key_id}"): Row(params={"client_id": "client", "key_id": "key"}, owned=True),
    ("GET", "/clients/{client_id}/costs"): Row(params={"client_id": "client"}, owned=True, reads=True),
    # The audit lists the caller's own calls, which name the ids it asked for (alpha's among them,
    # answered 404): only the tenant of each record is checked.
    ("GET", "/audit"): Row(lists=_ids("records", "client_id"), reads=True, caller=True),
    # requests, templates
    ("POST", "/requests"): Row(body=lambda ids: {"title": "Beta's own", "description": "mine"}),
    ("GET", "/requests"): Row(lists=_ids("requests", "request_id"), reads=True),
    ("GET", "/requests/{request_id}"): Row(params={"request_id": "request"}, owned=True, reads=True),
    ("PUT", "/requests/{request_id}"): Row(
        params={"request_id": "request"}, body=lambda ids: {"title": "taken over"}, owned=True
    ),
    ("POST", "/requests/{request_id}/execute"): Row(
        params={"request_id": "request"}, body=lambda ids: {}, admin_only=True
    ),
    ("GET", "/requests/{request_id}/deliverables"): Row(params={"request_id": "request"}, owned=True, reads=True),
    ("GET", "/deliverables/{deliverable_id}"): Row(params={"deliverable_id": "deliverable"}, owned=True, reads=True),
    ("GET", "/templates"): Row(reads=True),
    ("GET", "/templates/{template_id}"): Row(params={"template_id": "template"}, reads=True),
    ("POST", "/templates"): Row(body=lambda ids: {"name": "x"}, admin_only=True),
    ("POST", "/recommend-template"): Row(body=lambda ids: {"request_id": ids["request"]}, admin_only=True),
    ("POST", "/worker-sessions/{execution_id}/complete"): Row(
        params={"execution_id": "execution"}, body=lambda ids: {"execution_id": ids["execution"]}, worker=True
    ),
    ("GET", "/notifications/stream"): Row(),
    # the console
    ("GET", "/console/health"): Row(admin_only=True),
    # the operator's pages: the ledger across clients, the dead letters
    ("GET", "/costs"): Row(admin_only=True),
    ("GET", "/dead-letters"): Row(admin_only=True),
    ("POST", "/dead-letters/redrive"): Row(body=lambda ids: {}, admin_only=True),
}


def kam_row(path: str, method: str) -> Row | None:
    """The row of a KAM route, whichever of its prefixes the path has."""
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if path.startswith(prefix + "/"):
            return ROWS.get((method, path.removeprefix(prefix)))
    return ROWS.get((method, path))


@dataclass
class World:
    """KAM with alpha's and beta's resources, and every credential the matrix presents."""

    url: str
    service: Service
    ids: dict[str, str]
    credentials: dict[str, dict[str, str]]
    routes: list[tuple[str, str, dict[str, Any]]]


async def _login(http: aiohttp.ClientSession, url: str, username: str, password: str, kind: str) -> str:
    body = {"username": username, "password": password, "loginType": kind}
    async with http.post(f"{url}/api/auth/login", json=body) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["sessionToken"])


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, bytes]:
    async with http.request(method, url, headers=headers, json=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
        if r.headers.get("Content-Type", "").startswith("text/event-stream"):
            return r.status, b""  # a stream that was accepted: its status is the answer
        return r.status, await r.read()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    raw = MemoryRaw()
    service = await build("kam", tmp_path, raw=raw)
    await service.start()
    url = f"http://127.0.0.1:{service.port}"
    ctx = service.app[KAM_CONTEXT]
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            admin = {"X-Session-Token": await _login(http, url, KAM_ADMIN[0], KAM_ADMIN[1], "admin")}
            for client in (ALPHA, BETA):
                async with http.post(
                    f"{url}/api/clients", json={"client_id": client, "name": client}, headers=admin
                ) as r:
                    assert r.status == 201, await r.text()
                user = {"username": f"user@{client}.example", "password": PASSWORD}
                async with http.post(f"{url}/api/clients/{client}/users", json=user, headers=admin) as r:
                    assert r.status == 201, await r.text()
            alpha = {"X-Session-Token": await _login(http, url, f"user@{ALPHA}.example", PASSWORD, "client")}
            beta = {"X-Session-Token": await _login(http, url, f"user@{BETA}.example", PASSWORD, "client")}
            logged_out = {"X-Session-Token": await _login(http, url, f"user@{ALPHA}.example", PASSWORD, "client")}
            async with http.post(f"{url}/api/auth/logout", headers=logged_out) as r:
                assert r.status == 200, await r.text()
            request = {"title": "Market analysis", "description": "AI tools", "category": "research"}
            async with http.post(f"{url}/api/requests", json=request, headers=alpha) as r:
                assert r.status == 201, await r.text()
                request_id = (await r.json())["request_id"]
            async with http.get(f"{url}/api/templates", headers=admin) as r:
                template_id = str((await r.json())["templates"][0]["id"])

        # Alpha's run, as KAM records it: an execution, a deliverable in Raw, a ledger entry.
        execution_id = "exec_alpha_matrix"
        key = f"t/{ALPHA}/kam/deliverables/{request_id}/{execution_id}.json"
        content = json.dumps({"report": "alpha's secret report"}).encode()
        await raw.store(key, content, "application/json")
        stream = request_stream(request_id)
        events = [
            new_event(
                "nexus.kam.request.executing",
                KamRequestExecuting(request_id=request_id, execution_id=execution_id, workflow_id="w"),
                source="test",
                tenant=ALPHA,
            ),
            new_event(
                "nexus.kam.deliverable.recorded",
                KamDeliverableRecorded(
                    deliverable_id="dlv_alpha_matrix",
                    request_id=request_id,
                    client_id=ALPHA,
                    execution_id=execution_id,
                    type="report",
                    storage_ref=f"raw://{key}",
                    size_bytes=len(content),
                ),
                source="test",
                tenant=ALPHA,
            ),
        ]
        await ctx.append(stream, events)
        cost = KamCostRecorded(entry_id="cost_alpha_matrix", client_id=ALPHA, amount=1.5, request_id=request_id)
        await ctx.append(LEDGER_STREAM, [new_event("nexus.kam.cost.recorded", cost, source="test", tenant=ALPHA)])

        # An expired session of alpha's user: its token is known here, its expiry is past.
        user_id = ctx.state.user_named(f"user@{ALPHA}.example").user_id
        session_id, expired_token = new_session_token()
        opened = KamSessionOpened(
            session_id=session_id, hash=hash_secret(expired_token), user_id=user_id, expires_at=time.time() - 1
        )
        await ctx.append(SESSIONS_STREAM, [new_event("nexus.kam.session.opened", opened, source="test")])

        alpha_key = await issue_key(service.log, "client", ALPHA)
        narrow_key = await issue_key(service.log, "client", ALPHA, scopes=("templates:read",))
        revoked = await issue_key(service.log, "client", ALPHA)
        await revoke_key(service.log, revoked.info.key_id)
        worker = await issue_key(service.log, "worker", "orchestrator")
        routes = [
            (method.upper(), path, operation)
            for path, operations in service.openapi()["paths"].items()
            for method, operation in operations.items()
        ]
        yield World(
            url=url,
            service=service,
            ids={
                "client": ALPHA,
                "request": request_id,
                "deliverable": "dlv_alpha_matrix",
                "key": alpha_key.info.key_id,
                "execution": execution_id,
                "template": template_id,
            },
            credentials={
                "none": {},
                "expired": {"X-Session-Token": expired_token},
                "logged_out": logged_out,
                "revoked": {"X-API-Key": revoked.secret},
                "narrow_key": {"X-API-Key": narrow_key.secret},
                "worker": {"Authorization": f"Bearer {worker.secret}"},
                "worker_as_key": {"X-API-Key": worker.secret},
                "alpha": alpha,
                "alpha_key": {"X-API-Key": alpha_key.secret},
                "beta": beta,
                "admin": admin,
            },
            routes=routes,
        )
    finally:
        await service.stop()


def _fill(path: str, row: Row, ids: dict[str, str], missing: bool = False) -> str:
    for name, key in row.params.items():
        value = f"missing-{ids[key]}" if missing and key != "client" else ids[key]
        if missing and key == "client":
            value = "no-such-client"
        path = path.replace("{" + name + "}", value)
    return path


async def test_every_kam_route_has_a_row(world: World) -> None:
    missing = [
        f"{method} {path}"
        for method, path, _ in world.routes
        if (method, path) not in PUBLIC and kam_row(path, method) is None
    ]
    assert missing == [], "routes without a row in the KAM isolation matrix: " + ", ".join(missing)
    assert len([r for r in world.routes if (r[0], r[1]) not in PUBLIC]) >= 2 * (len(ROWS) - 1)


async def test_every_kam_route_refuses_who_must_be_refused(world: World) -> None:
    checked = 0
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for method, path, operation in world.routes:
            row = kam_row(path, method)
            if (method, path) in PUBLIC or row is None:
                continue
            url = world.url + _fill(path, row, world.ids)
            body = row.body(world.ids) if row.body else None
            for name in ("none", "expired", "logged_out", "revoked"):
                status, answer = await _call(http, method, url, world.credentials[name], body)
                assert status == 401, f"{name} on {method} {path}: {status} {answer[:200]!r}"
                checked += 1
            if row.worker:
                status, answer = await _call(http, method, url, world.credentials["alpha"], body)
                assert status == 401, f"a session on worker route {method} {path}: {status} {answer[:200]!r}"
                checked += 1
                continue
            status, answer = await _call(http, method, url, world.credentials["worker_as_key"], body)
            assert status == 403, f"a worker token on {method} {path}: {status} {answer[:200]!r}"
            checked += 1
            scope = operation.get("x-nexus-scope")
            if scope is not None and scope != "templates:read":
                status, answer = await _call(http, method, url, world.credentials["narrow_key"], body)
                assert status == 403, f"a key without {scope} on {method} {path}: {status} {answer[:200]!r}"
                assert scope in answer.decode() or "admin" in answer.decode()
                checked += 1
    assert checked > 200
    print(f"KAM isolation matrix: {checked} refusals checked over {len(world.routes)} routes")


async def test_another_clients_session_gets_404_exactly_as_for_nothing_and_sees_nothing(world: World) -> None:
    beta = world.credentials["beta"]
    alpha_ids = set(world.ids.values()) - {world.ids["template"]}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for method, path, _ in world.routes:
            row = kam_row(path, method)
            if (method, path) in PUBLIC or row is None or row.worker or (row.caller and row.lists is None):
                continue
            url = world.url + _fill(path, row, world.ids)
            body = row.body(world.ids) if row.body else None
            status, answer = await _call(http, method, url, beta, body)
            if row.admin_only:
                assert status in (403, 404), f"beta on admin route {method} {path}: {status} {answer[:200]!r}"
                continue
            if row.owned:
                assert status == 404, f"beta on alpha's {method} {path}: {status} {answer[:200]!r}"
                missing_url = world.url + _fill(path, row, world.ids, missing=True)
                missing_status, missing_answer = await _call(http, method, missing_url, beta, body)
                assert missing_status == 404
                substituted = answer
                for key in row.params.values():
                    fake = "no-such-client" if key == "client" else f"missing-{world.ids[key]}"
                    substituted = substituted.replace(world.ids[key].encode(), fake.encode())
                assert substituted == missing_answer, f"{method} {path} tells alpha's resource from a missing one"
                continue
            if row.lists is not None:
                assert status == 200, f"beta listing {method} {path}: {status}"
                shown = row.lists(json.loads(answer))
                assert not (shown & (alpha_ids | {ALPHA})), f"{method} {path} shows beta alpha's {shown & alpha_ids}"
            if not row.caller:
                assert not any(i.encode() in answer for i in alpha_ids - {ALPHA}), f"{method} {path} leaks to beta"


async def test_the_owner_and_the_admin_are_served(world: World) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for method, path, _ in world.routes:
            row = kam_row(path, method)
            if row is None or not row.reads or path.endswith("/stream"):
                continue
            url = world.url + _fill(path, row, world.ids)
            for name in ("alpha", "alpha_key", "admin"):
                if name == "alpha_key" and path.startswith(("/api/auth", "/api/kam/auth")):
                    continue  # a key is no login: it has no session to describe
                status, answer = await _call(http, method, url, world.credentials[name])
                assert status == 200, f"{name} on {method} {path}: {status} {answer[:300]!r}"


async def test_a_session_is_refused_by_every_replica_once_logged_out(world: World, tmp_path: Path) -> None:
    # A second replica on the same log: it folds the logout too.
    other = await build("kam", tmp_path / "second", log=world.service.log, bus=world.service.bus, raw=world.service.raw)
    await other.start()
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            url = f"http://127.0.0.1:{other.port}/api/requests"
            await asyncio.sleep(0)
            status, _ = await _call(http, "GET", url, world.credentials["logged_out"])
            assert status == 401
            status, _ = await _call(http, "GET", url, world.credentials["alpha"])
            assert status == 200
    finally:
        await other.stop()
