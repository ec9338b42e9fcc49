"""The notification stream: a client's request transitions, live, isolated, resumable from the log.

Alpha, beta and an admin hold streams open while alpha's request is created, assigned, executed
on the workflow service and completed; beta then creates a request of its own. Alpha sees its
transitions in order, beta only its own, the admin both; alpha reconnecting with Last-Event-ID
gets exactly what followed, read back from the log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from factory_harness import ALPHA, BETA, Factory, factory

from nexus.auth import issue_key
from nexus.client._sse import parse_sse


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Factory]:
    async for built in factory(tmp_path):
        yield built


class Listener:
    """One open stream and the notifications read from it so far."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.seen: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in parse_sse(self.response.content):
            self.seen.append({**event, "data": json.loads(event["data"])})

    def kinds(self, request_id: str | None = None) -> list[str]:
        return [
            n["event"].removeprefix("nexus.kam.")
            for n in self.seen
            if request_id is None or n["data"].get("request_id") == request_id
        ]

    async def until(self, kind: str, request_id: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while kind not in self.kinds(request_id):  # noqa: ASYNC110 - polls what the reader collected
                await asyncio.sleep(0.01)


async def listen(stack: AsyncExitStack, platform: Factory, who: str, last_event_id: str | None = None) -> Listener:
    """Open ``who``'s stream; once the headers are in, KAM has subscribed it."""
    headers = {**platform.headers[who], "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    response = await stack.enter_async_context(
        platform.http.get(platform.url() + "/api/notifications/stream", headers=headers)  # type: ignore[union-attr]
    )
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    listener = Listener(response)
    stack.callback(listener.task.cancel)
    return listener


async def test_each_client_sees_its_own_transitions_live_and_resumes_from_the_log(platform: Factory) -> None:
    async with AsyncExitStack() as stack:
        alpha = await listen(stack, platform, ALPHA)
        beta = await listen(stack, platform, BETA)
        admin = await listen(stack, platform, "admin")

        # Alpha's request goes the whole way, through the workflow service.
        request_id = await platform.add_request(ALPHA, "report")
        status, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
        assert status == 202, started
        await alpha.until("request.completed", request_id)
        assert alpha.kinds(request_id) == [
            "request.created",
            "request.template_assigned",
            "request.executing",
            "deliverable.recorded",
            "request.completed",
        ]
        completed = alpha.seen[-1]
        assert completed["data"]["status"] == "completed" and completed["data"]["client_id"] == ALPHA
        assert completed["data"]["execution_id"] == started["execution_id"]
        positions = [int(n["id"]) for n in alpha.seen]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)

        # Beta's own request: the first thing beta's stream shows; nothing of alpha's came before.
        own = await platform.add_request(BETA, None, title="Beta's own")
        await beta.until("request.created", own)
        assert beta.kinds() == ["request.created"] and beta.seen[0]["data"]["client_id"] == BETA
        assert request_id not in json.dumps(beta.seen)
        # The admin saw both clients' transitions.
        await admin.until("request.created", own)
        assert admin.kinds(request_id) == alpha.kinds(request_id) and admin.kinds(own) == ["request.created"]

        # Alpha reconnects after the first notification: the rest, from the log, then live ones.
        resumed = await listen(stack, platform, ALPHA, last_event_id=alpha.seen[0]["id"])
        await resumed.until("request.completed", request_id)
        assert [n["id"] for n in resumed.seen] == [n["id"] for n in alpha.seen[1:]]
        assert resumed.seen == alpha.seen[1:]


async def test_the_stream_needs_a_credential_and_the_scope(platform: Factory) -> None:
    async with platform.http.get(platform.url() + "/api/notifications/stream") as response:  # type: ignore[union-attr]
        assert response.status == 401
    status, _ = await platform.call("GET", "/api/notifications/stream", "worker")
    assert status == 401  # a worker token is no client credential
    # A key issued without the scope: 403.
    narrow = await issue_key(platform.log, "client", ALPHA, scopes=("requests:read",))
    platform.headers["narrow"] = {"X-API-Key": narrow.secret}
    await platform.ctx().caught_up(await platform.log.head())
    status, body = await platform.call("GET", "/api/notifications/stream", "narrow")
    assert status == 403 and "notifications:read" in body["message"]


async def test_a_users_login_session_opens_the_stream_by_header_or_cookie(platform: Factory) -> None:
    password = "a long enough passphrase for ana"
    status, body = await platform.call(
        "POST", f"/api/clients/{ALPHA}/users", "admin", {"username": "ana@alpha.example", "password": password}
    )
    assert status in (200, 201), body
    async with platform.http.post(  # type: ignore[union-attr]
        platform.url() + "/api/auth/login",
        json={"username": "ana@alpha.example", "password": password, "loginType": "client"},
    ) as response:
        login = await response.json()
        assert response.status == 200 and login["success"] is True, login
    token = login["sessionToken"]
    platform.headers["ana-header"] = {"x-bitware-session-token": token}
    platform.headers["ana-cookie"] = {"Cookie": f"nexus_session={token}"}
    async with AsyncExitStack() as stack:
        by_header = await listen(stack, platform, "ana-header")
        by_cookie = await listen(stack, platform, "ana-cookie")
        first = await platform.add_request(ALPHA, None, title="Ana's")
        other = await platform.add_request(BETA, None, title="Not Ana's")
        second = await platform.add_request(ALPHA, None, title="Ana's second")
        # Beta's event lies between alpha's two: once the second is in, it would have been too.
        for listener in (by_header, by_cookie):
            await listener.until("request.created", second)
            assert [n["data"]["request_id"] for n in listener.seen] == [first, second]
            assert other not in json.dumps(listener.seen)
