"""KAM's requests (seed 002, phases 2-3): created by a client, listed, read, edited, assigned a template.

KAM runs in-process on a memory log, with clients ``alpha`` (standard) and ``beta`` recorded in
its accounts stream; callers hold API keys (a session is another credential for the same routes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from inprocess import KAM_ADMIN, build

import nexus.services.kam.requests as kam_requests
from nexus.auth import issue_key
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import new_event
from nexus.proto.events.kam import KamClientCreated, KamRequestExecuting
from nexus.runtime import Service
from nexus.services.kam.context import CLIENT_SCOPES
from nexus.services.kam.state import ACCOUNTS_STREAM, CLIENT_CREATED, REQUEST_EXECUTING, request_stream

SEED_REQUEST = {
    "title": "Market Analysis for AI Tools",
    "description": "Need comprehensive analysis...",
    "urgency": "high",
    "category": "research",
}


@dataclass
class Kam:
    """A started KAM and one API key per caller."""

    service: Service
    log: MemoryEventLog
    url: str
    http: aiohttp.ClientSession
    keys: dict[str, str] = field(default_factory=dict)

    async def call(
        self, method: str, path: str, who: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        sent = {"X-API-Key": self.keys[who], **(headers or {})}
        async with self.http.request(method, self.url + path, json=body, headers=sent) as r:
            return r.status, await r.json(), r.headers

    async def create(self, who: str = "alpha", **fields: Any) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/api/requests", who, {**SEED_REQUEST, **fields})
        assert status == 201, body
        return dict(body)


async def add_clients(log: MemoryEventLog, *clients: tuple[str, str]) -> None:
    """Record clients as KAM's admin would (``POST /api/clients``)."""
    for client_id, tier in clients:
        data = KamClientCreated(client_id=client_id, name=client_id.title(), tier=tier)
        await log.append(ACCOUNTS_STREAM, [new_event(CLIENT_CREATED, data, source="nexus/kam", tenant=client_id)])


@pytest.fixture
async def kam(tmp_path: Path) -> AsyncIterator[Kam]:
    log = MemoryEventLog()
    await add_clients(log, ("alpha", "standard"), ("beta", "basic"))
    service = await build("kam", tmp_path, log=log)
    await service.start()
    keys = {
        "admin": (await issue_key(log, "client", "ops", scopes=("admin",))).secret,
        "alpha": (await issue_key(log, "client", "alpha", scopes=CLIENT_SCOPES)).secret,
        "beta": (await issue_key(log, "client", "beta", scopes=CLIENT_SCOPES)).secret,
        "alpha_reader": (await issue_key(log, "client", "alpha", scopes=("requests:read",))).secret,
    }
    async with aiohttp.ClientSession() as http:
        yield Kam(service, log, f"http://127.0.0.1:{service.port}", http, keys)
    await service.stop()


async def test_a_client_creates_a_request_and_only_it_and_admins_see_it(kam: Kam) -> None:
    # The seed's body on the seed frontend's path.
    status, created, headers = await kam.call("POST", "/api/kam/requests", "alpha", SEED_REQUEST)
    assert status == 201, created
    request_id = created["request_id"]
    assert request_id.startswith("req_") and int(request_id[4:], 16) >= 0
    assert created["client_id"] == "alpha" and created["status"] == "pending"
    assert {k: created[k] for k in SEED_REQUEST} == SEED_REQUEST
    assert [h["status"] for h in created["history"]] == ["pending"]
    assert headers["ETag"] == '"1"' and created["version"] == 1
    # One event in the request's own stream, owned by the client.
    [event] = await kam.log.read_stream(request_stream(request_id))
    assert event.type == "nexus.kam.request.created" and event.tenant == "alpha"
    assert event.data["created_by"].startswith("key:")
    # The client reads it under both prefixes; another client gets 404, as for a missing one.
    for prefix in ("/api", "/api/kam"):
        status, body, _ = await kam.call("GET", f"{prefix}/requests/{request_id}", "alpha")
        assert status == 200 and body["title"] == SEED_REQUEST["title"]
    status, beta_body, _ = await kam.call("GET", f"/api/requests/{request_id}", "beta")
    status_missing, missing_body, _ = await kam.call("GET", "/api/requests/req_0000", "beta")
    assert status == status_missing == 404
    assert beta_body["error"] == missing_body["error"] == "not_found"
    status, listed, _ = await kam.call("GET", "/api/requests", "beta")
    assert status == 200 and listed["requests"] == []
    # An admin sees it, alone or in every client's listing.
    status, body, _ = await kam.call("GET", f"/api/requests/{request_id}", "admin")
    assert status == 200 and body["client_id"] == "alpha"
    await kam.create("beta", title="Beta's own")
    status, listed, _ = await kam.call("GET", "/api/requests", "admin")
    assert {r["client_id"] for r in listed["requests"]} == {"alpha", "beta"}
    status, listed, _ = await kam.call("GET", "/api/requests?client_id=beta", "admin")
    assert [r["title"] for r in listed["requests"]] == ["Beta's own"]


async def test_creation_refuses_bad_bodies_and_the_wrong_client(kam: Kam) -> None:
    cases = [
        ({**SEED_REQUEST, "status": "completed"}, 400, "status"),  # no mass assignment
        ({**SEED_REQUEST, "urgency": "yesterday"}, 400, "urgency"),
        ({**SEED_REQUEST, "title": "   "}, 400, "title"),
        ({"description": "no title"}, 400, "title"),
        ({**SEED_REQUEST, "client_id": "beta"}, 403, "client_id"),
    ]
    for body, expected, named in cases:
        status, answer, _ = await kam.call("POST", "/api/requests", "alpha", body)
        assert status == expected and named in answer["message"], (body, answer)
    # A key without requests:write may read but not create.
    status, answer, _ = await kam.call("POST", "/api/requests", "alpha_reader", SEED_REQUEST)
    assert status == 403, answer
    # An admin names the client, and it must be one KAM knows.
    status, answer, _ = await kam.call("POST", "/api/requests", "admin", SEED_REQUEST)
    assert status == 400 and "client_id" in answer["message"]
    status, answer, _ = await kam.call("POST", "/api/requests", "admin", {**SEED_REQUEST, "client_id": "gamma"})
    assert status == 400 and "gamma" in answer["message"]
    status, answer, _ = await kam.call("POST", "/api/requests", "admin", {**SEED_REQUEST, "client_id": "beta"})
    assert status == 201 and answer["client_id"] == "beta"
    # Nothing refused left a trace: only the admin's request exists.
    status, listed, _ = await kam.call("GET", "/api/requests", "admin")
    assert [r["client_id"] for r in listed["requests"]] == ["beta"]


async def test_listing_filters_and_pages_newest_first(kam: Kam) -> None:
    made = []
    for i in range(7):
        made.append(
            await kam.create(
                title=f"Report {i}",
                description="tea market" if i % 2 else "coffee prices",
                urgency=("low", "normal", "high", "urgent")[i % 4],
                category="research" if i < 4 else "education",
            )
        )
    ids = [m["request_id"] for m in made]

    async def listing(query: str, who: str = "alpha") -> list[str]:
        status, body, _ = await kam.call("GET", f"/api/requests?{query}", who)
        assert status == 200, body
        return [r["request_id"] for r in body["requests"]]

    assert await listing("") == ids[::-1]
    assert await listing("category=education") == ids[4:][::-1]
    assert await listing("urgency=urgent") == [ids[3]]
    assert await listing("q=TEA+market") == [ids[5], ids[3], ids[1]]
    assert await listing("q=tea&category=research") == [ids[3], ids[1]]
    assert await listing("status=pending") == ids[::-1] and await listing("status=completed") == []
    assert await listing("client_id=beta") == []  # a client's listing is its own, whatever it asks
    # Pages of 3 cover every request once, newest first, even when one is created meanwhile.
    seen: list[str] = []
    cursor = ""
    while True:
        status, body, _ = await kam.call("GET", f"/api/requests?limit=3{cursor}", "alpha")
        assert status == 200 and len(body["requests"]) <= 3
        seen += [r["request_id"] for r in body["requests"]]
        if not seen[3:]:
            await kam.create(title="Arrived between pages")
        if body["next_cursor"] is None:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert seen == ids[::-1]
    for query, named in (("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"), ("cursor=zz", "cursor")):
        status, body, _ = await kam.call("GET", f"/api/requests?{query}", "alpha")
        assert status == 400 and named in body["message"], body
    status, body, _ = await kam.call("GET", "/api/requests?status=lost", "alpha")
    assert status == 400 and "status" in body["message"]
    # Listings carry no history (the request itself does).
    status, body, _ = await kam.call("GET", "/api/requests?limit=1", "alpha")
    assert "history" not in body["requests"][0]


async def test_an_admin_assigns_a_template_with_checked_parameters(kam: Kam) -> None:
    request_id = (await kam.create())["request_id"]
    path = f"/api/kam/requests/{request_id}"
    # The seed's body: template_id a number, its name, parameters; the defaults are filled in.
    seed = {
        "template_id": 5,
        "template_name": "comprehensive_report_pipeline",
        "parameters": {"depth": "detailed", "sources": 10},
    }
    status, body, headers = await kam.call("PUT", path, "admin", seed)
    assert status == 200, body
    assert body["status"] == "template_assigned" and headers["ETag"] == '"2"'
    template = body["template"]
    assert template["template_id"] == "5" and template["template_name"] == "comprehensive_report_pipeline"
    assert template["workflow_id"] == "kam_comprehensive_report" and template["tier"] == "premium"
    assert template["parameters"] == {
        "depth": "detailed",
        "sources": 10,
        "audience": "decision makers",
        "validate": True,
        "max_tokens": 4000,
        "summary_tokens": 400,
    }
    events = await kam.log.read_stream(request_stream(request_id))
    assert [e.type for e in events] == ["nexus.kam.request.created", "nexus.kam.request.template_assigned"]
    assert events[1].data["assigned_by"].startswith("key:") and events[1].tenant == "alpha"
    # The id as text, or a name in template_id, resolve too; reassigning is allowed before execution.
    for body_sent, name in (
        ({"template_id": "1"}, "quick_brief"),
        ({"template_id": "course_outline_builder", "parameters": {"structure_type": "book"}}, "course_outline_builder"),
        ({"template_name": "article_draft"}, "article_draft"),
    ):
        status, body, _ = await kam.call("PUT", path, "admin", body_sent)
        assert status == 200 and body["template"]["template_name"] == name, body
    status, body, _ = await kam.call("GET", path, "alpha")
    assert [h["status"] for h in body["history"]] == ["pending"] + ["template_assigned"] * 4
    # Refusals name the field at fault.
    refusals = [
        ({"template_id": 99}, "template_id"),
        ({"template_id": True}, "template_id"),
        ({}, "template_id"),
        ({"template_name": "no_such_template"}, "template_name"),
        ({"template_id": 5, "template_name": "quick_brief"}, "template_name"),
        ({"template_id": 5, "parameters": {"depth": "bottomless"}}, "parameters.depth"),
        ({"template_id": 5, "parameters": {"sources": 1000}}, "parameters.sources"),
        ({"template_id": 5, "parameters": {"colour": "red"}}, "parameters"),
        ({"template_id": 5, "status": "completed"}, "status"),
    ]
    for body_sent, named in refusals:
        status, body, _ = await kam.call("PUT", path, "admin", body_sent)
        assert status == 400 and named in body["message"], (body_sent, body)
    # Once executing, no assignment: 409 naming the status.
    executing = KamRequestExecuting(request_id=request_id, execution_id="exec-1", workflow_id="kam_quick_brief")
    await kam.log.append(
        request_stream(request_id), [new_event(REQUEST_EXECUTING, executing, source="nexus/kam", tenant="alpha")]
    )
    await asyncio.sleep(0.05)
    status, body, _ = await kam.call("PUT", path, "admin", {"template_id": 1})
    assert status == 409 and "executing" in body["message"], body


async def test_a_client_edits_its_own_fields_while_pending(kam: Kam) -> None:
    request_id = (await kam.create())["request_id"]
    path = f"/api/requests/{request_id}"
    status, body, _ = await kam.call(
        "PUT", path, "alpha", {"title": "Market Analysis for AI Agents", "urgency": "high"}
    )
    assert status == 200 and body["title"] == "Market Analysis for AI Agents" and body["version"] == 2, body
    [_, updated] = await kam.log.read_stream(request_stream(request_id))
    assert updated.type == "nexus.kam.request.updated"
    assert updated.data["changes"] == {"title": "Market Analysis for AI Agents"}  # urgency was already high
    # Nothing changed: nothing recorded.
    status, body, _ = await kam.call("PUT", path, "alpha", {"category": "research"})
    assert status == 200 and body["version"] == 2
    # Template fields are the admin's: 403; unknown fields: 400; another client: 404.
    status, body, _ = await kam.call("PUT", path, "alpha", {"template_id": 5, "title": "x"})
    assert status == 403 and "template_id" in body["message"]
    status, body, _ = await kam.call("PUT", path, "alpha", {"status": "completed"})
    assert status == 400 and "status" in body["message"]
    status, body, _ = await kam.call("PUT", path, "alpha", {"urgency": "whenever"})
    assert status == 400 and "urgency" in body["message"]
    status, body, _ = await kam.call("PUT", path, "alpha", {"title": "   "})
    assert status == 400 and "title" in body["message"]
    status, body, _ = await kam.call("PUT", path, "beta", {"title": "mine now"})
    assert status == 404
    status, body, _ = await kam.call("PUT", path, "alpha_reader", {"title": "x"})
    assert status == 403
    # A stale If-Match is refused; the current one passes.
    status, body, _ = await kam.call("PUT", path, "alpha", {"title": "Old view"}, headers={"If-Match": '"1"'})
    assert status == 412 and "version 2" in body["message"]
    status, body, _ = await kam.call("PUT", path, "alpha", {"description": "More"}, headers={"If-Match": '"2"'})
    assert status == 200 and body["description"] == "More"
    # After assignment the client can no longer edit: 409 naming the status.
    status, _, _ = await kam.call("PUT", path, "admin", {"template_id": 1})
    status, body, _ = await kam.call("PUT", path, "alpha", {"title": "Late change"})
    assert status == 409 and "template_assigned" in body["message"], body
    assert len(await kam.log.read_stream(request_stream(request_id))) == 4


async def test_of_two_concurrent_edits_one_wins(kam: Kam, monkeypatch: pytest.MonkeyPatch) -> None:
    request_id = (await kam.create())["request_id"]
    real = kam_requests.read_json
    arrived: list[int] = []
    both, first_done = asyncio.Event(), asyncio.Event()

    async def read_together(request: Any, type_: Any) -> Any:
        # Both PUTs have read the request's version before either decides. The first goes on; the
        # second waits until the first has answered (its change folded), then decides on what it read.
        arrived.append(1)
        mine = len(arrived)
        if mine == 2:
            both.set()
            await first_done.wait()
        await both.wait()
        return await real(request, type_)

    monkeypatch.setattr(kam_requests, "read_json", read_together)
    calls = [
        asyncio.create_task(kam.call("PUT", f"/api/requests/{request_id}", "alpha", {"title": "First"})),
        asyncio.create_task(kam.call("PUT", f"/api/requests/{request_id}", "admin", {"template_id": 1})),
    ]
    done, pending = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
    first_done.set()
    [winner] = [task.result() for task in done]
    [loser] = [await task for task in pending]
    assert winner[0] == 200, winner
    assert loser[0] == 409 and "changed meanwhile" in loser[1]["message"], loser
    assert len(await kam.log.read_stream(request_stream(request_id))) == 2


async def test_the_seed_flow_with_login_sessions(kam: Kam) -> None:
    # Phases 1-3 as the seed's frontend drives them: sessions in x-bitware-session-token.
    async def login(username: str, password: str, login_type: str) -> str:
        body = {"username": username, "password": password, "loginType": login_type}
        async with kam.http.post(kam.url + "/api/kam/auth/login", json=body) as r:
            answer = await r.json()
            assert r.status == 200, answer
            return str(answer["sessionToken"])

    async def as_session(token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"x-bitware-session-token": token}
        async with kam.http.request(method, kam.url + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    admin = await login(KAM_ADMIN[0], KAM_ADMIN[1], "admin")
    status, body = await as_session(
        admin, "POST", "/api/clients/alpha/users", {"username": "alice", "password": "a long enough passphrase"}
    )
    assert status == 201, body
    alice = await login("alice", "a long enough passphrase", "client")
    status, created = await as_session(alice, "POST", "/api/kam/requests", SEED_REQUEST)
    assert status == 201 and created["client_id"] == "alpha", created
    assert created["created_by"] == f"user:{body['id']}"
    status, listed = await as_session(alice, "GET", "/api/kam/requests")
    assert [r["request_id"] for r in listed["requests"]] == [created["request_id"]]
    status, templates = await as_session(admin, "GET", "/api/kam/templates?tier=premium")
    assert status == 200 and templates["templates"][0]["id"] == 5
    status, advice = await as_session(
        admin, "POST", "/api/kam/recommend-template", {"request_id": created["request_id"], "client_context": {}}
    )
    assert status == 200 and advice["recommendations"][0]["template_name"] == "comprehensive_report_pipeline"
    seed = {
        "template_id": 5,
        "template_name": "comprehensive_report_pipeline",
        "parameters": {"depth": "detailed", "sources": 10},
    }
    status, assigned = await as_session(admin, "PUT", f"/api/kam/requests/{created['request_id']}", seed)
    assert status == 200 and assigned["status"] == "template_assigned", assigned
    # The client's session cannot assign, nor ask for a recommendation.
    status, _ = await as_session(alice, "PUT", f"/api/kam/requests/{created['request_id']}", {"template_id": 1})
    assert status == 403
    status, _ = await as_session(alice, "POST", "/api/kam/recommend-template", {"request_id": created["request_id"]})
    assert status == 403
