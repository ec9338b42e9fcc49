"""The console's way in: KAM's gateway to the workflow service and the studio, the user's session
accepted there (folded from the log, never asked of KAM), and the CSRF rule for the cookie.

KAM and the workflow service run in this process on one in-memory log and bus, each on its own
port; every call goes over real HTTP, through the gateway as the console's are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from accounts_harness import Kam, KeptLog, running_kam
from inprocess import build, memory_bus
from processes import free_port

from nexus.auth import issue_key
from nexus.proto import new_event
from nexus.proto.events.kam import KamUserPasswordChanged
from nexus.runtime import Service
from nexus.services.kam.state import ACCOUNTS_STREAM, PASSWORD_CHANGED

WORKFLOW = """
id: gateway_probe
name: Gateway probe
steps:
  - id: wait
    type: wait_event
    event: com.example.never
    timeout_seconds: 60
"""


@dataclass
class Platform:
    kam: Kam
    workflow: Service
    acme: str
    """A session token of acme's user."""
    globex: str
    """A session token of globex's user."""


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    log, bus = KeptLog(), await memory_bus()
    workflow = await build("workflow", tmp_path / "wf", log=log, bus=bus)
    await workflow.start()
    try:
        urls = {
            "NEXUS_SERVICE_WORKFLOW": f"http://127.0.0.1:{workflow.port}",
            # Nobody listens here: the gateway's 502.
            "NEXUS_SERVICE_STUDIO": f"http://127.0.0.1:{free_port()}",
        }
        async with running_kam(tmp_path, log=log, **urls) as kam:
            admin = await kam.admin()
            _, acme = await kam.client_with_user(admin, "acme")
            _, globex = await kam.client_with_user(admin, "globex")
            yield Platform(kam=kam, workflow=workflow, acme=acme, globex=globex)
    finally:
        await workflow.stop()


async def _browser(kam: Kam, username: str, password: str) -> tuple[aiohttp.ClientSession, str]:
    """A client session that keeps cookies, as a browser does, signed in; answers it and the CSRF token."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    body = {"username": username, "password": password, "loginType": "client"}
    async with http.post(f"{kam.url}/api/auth/login", json=body) as answer:
        assert answer.status == 200, await answer.text()
    csrf = next(c.value for c in http.cookie_jar if c.key == "nexus_csrf")
    return http, csrf


async def _register(platform: Platform) -> None:
    async with platform.kam.http.post(
        f"{platform.kam.url}/svc/workflow/workflows",
        data=WORKFLOW,
        headers={"X-Session-Token": platform.acme, "Content-Type": "application/yaml"},
    ) as answer:
        assert answer.status == 201, await answer.text()


async def test_the_gateway_forwards_with_the_session_and_the_service_checks_the_owner(platform: Platform) -> None:
    kam = platform.kam
    await _register(platform)
    http, csrf = await _browser(kam, "acme-user@example.com", "a long enough passphrase")
    async with http:
        start = {"workflow_id": "gateway_probe", "input": {}}
        # The cookie alone cannot change anything: a page of another site could make the browser send it.
        async with http.post(f"{kam.url}/svc/workflow/executions", json=start) as refused:
            assert refused.status == 403, await refused.text()
            assert "X-CSRF-Token" in (await refused.json())["message"]
        async with http.post(
            f"{kam.url}/svc/workflow/executions", json=start, headers={"X-CSRF-Token": "forged"}
        ) as bad:
            assert bad.status == 403
        async with http.post(
            f"{kam.url}/svc/workflow/executions", json=start, headers={"X-CSRF-Token": csrf}
        ) as started:
            assert started.status in (200, 201, 202), await started.text()
            execution_id = (await started.json())["id"]
        # Reading needs no CSRF token; the execution is acme's.
        async with http.get(f"{kam.url}/svc/workflow/executions/{execution_id}") as mine:
            assert mine.status == 200, await mine.text()
            assert (await mine.json())["id"] == execution_id
        # Its live stream comes through the gateway as Server-Sent Events.
        async with http.get(f"{kam.url}/svc/workflow/executions/{execution_id}/stream") as stream:
            assert stream.status == 200 and stream.content_type == "text/event-stream"
            first = await stream.content.readuntil(b"\n\n")
            assert b"id:" in first or b"data:" in first

        # Globex's user, with its own session, gets 404 for acme's execution, through the gateway or not.
        for base in (kam.url + "/svc/workflow", f"http://127.0.0.1:{platform.workflow.port}"):
            async with kam.http.get(
                f"{base}/executions/{execution_id}", headers={"X-Session-Token": platform.globex}
            ) as other:
                assert other.status == 404, await other.text()

        # Signing out ends the session everywhere, the workflow service included.
        async with http.post(f"{kam.url}/api/auth/logout", json={}, headers={"X-CSRF-Token": csrf}) as out:
            assert out.status == 200, await out.text()
        async with kam.http.get(
            f"{kam.url}/svc/workflow/executions/{execution_id}", headers={"X-Session-Token": platform.acme}
        ) as still_other_session:
            assert still_other_session.status == 200  # acme's other session is still open
        async with http.get(f"{kam.url}/svc/workflow/executions/{execution_id}") as after:
            assert after.status == 401, await after.text()


async def test_kam_own_routes_need_the_csrf_token_with_the_cookie(platform: Platform) -> None:
    kam = platform.kam
    http, csrf = await _browser(kam, "acme-user@example.com", "a long enough passphrase")
    async with http:
        body = {"title": "A title", "description": "A description long enough to be a request."}
        async with http.post(f"{kam.url}/api/requests", json=body) as refused:
            assert refused.status == 403 and (await refused.json())["error"] == "csrf"
        async with http.post(f"{kam.url}/api/requests", json=body, headers={"X-CSRF-Token": csrf}) as created:
            assert created.status == 201, await created.text()
        # A session token in a header is not sent by a browser on its own: no CSRF token needed.
        async with kam.http.post(
            f"{kam.url}/api/requests", json=body, headers={"X-Session-Token": platform.acme}
        ) as header:
            assert header.status == 201, await header.text()


async def test_the_gateway_says_which_service_is_unknown_or_silent(platform: Platform) -> None:
    kam = platform.kam
    headers = {"X-Session-Token": platform.acme}
    async with kam.http.get(f"{kam.url}/svc/granulator/healthz", headers=headers) as unknown:
        assert unknown.status == 404 and "workflow, studio" in (await unknown.json())["message"]
    async with kam.http.get(f"{kam.url}/svc/studio/blobs", headers=headers) as silent:
        assert silent.status == 502 and "studio" in (await silent.json())["message"]


async def test_an_api_key_passes_the_gateway_unchanged(platform: Platform, tmp_path: Path) -> None:
    kam = platform.kam
    issued = await issue_key(kam.log, "client", "acme")
    await _register(platform)
    async with kam.http.get(
        f"{kam.url}/svc/workflow/workflows/gateway_probe", headers={"X-API-Key": issued.secret}
    ) as got:
        assert got.status == 200, await got.text()
    async with kam.http.get(f"{kam.url}/svc/workflow/workflows/gateway_probe") as nobody:
        assert nobody.status == 401


async def test_health_shows_each_process_and_is_for_admins(platform: Platform) -> None:
    kam = platform.kam
    admin = await kam.admin()
    health = await kam.call("GET", "/api/console/health", token=admin)
    assert health.status == 200, health.text
    services = {s["name"]: s for s in health.body["services"]}
    assert services["kam"]["status"] == "ready"
    assert services["workflow"]["status"] == "ready"
    assert services["studio"]["status"] == "unreachable"  # nobody listens there in this test
    assert health.body["status"] == "degraded" and health.body["log_head"] > 0
    assert (await kam.call("GET", "/api/console/health", token=platform.acme)).status == 403


async def _raw_request(url: str, target: str) -> tuple[int, bytes]:
    """Send ``GET <target>`` as written (no client normalises it); answers (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_gateway_forwards_only_the_plain_form_of_its_path(platform: Platform) -> None:
    kam = platform.kam
    workflow = f"127.0.0.1:{platform.workflow.port}"
    # A request in absolute form, whose text after /svc/workflow would name another host as the
    # URL's user: refused, never forwarded (the workflow service's healthz is not answered).
    status, body = await _raw_request(kam.url, f"http://attacker@{workflow}/svc/workflow/healthz")
    assert status == 404 and b'"ok"' not in body, body
    # The service's name percent-encoded: the cut would fall in the wrong place. Refused too.
    status, body = await _raw_request(kam.url, "/svc/workflo%77/healthz")
    assert status == 404 and b'"ok"' not in body, body
    # The plain form is forwarded.
    status, body = await _raw_request(kam.url, "/svc/workflow/healthz")
    assert status == 200 and b'"ok"' in body, body


async def test_what_the_gateway_forwards_is_never_a_page_of_the_consoles_origin(platform: Platform) -> None:
    kam = platform.kam
    async with kam.http.get(f"{kam.url}/svc/workflow/healthz") as answer:
        assert answer.status == 200
        # An uploaded file served with the uploader's content type, opened in a tab, would run
        # as this origin: every forwarded answer is sandboxed (no script, no cookie) instead.
        assert answer.headers["Content-Security-Policy"].startswith("sandbox")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_session_older_than_its_users_password_change_is_refused_everywhere(platform: Platform) -> None:
    kam = platform.kam
    user = next(u for u in kam.ctx.state.users.values() if u.client_id == "acme")
    url = f"http://127.0.0.1:{platform.workflow.port}/workflows"
    async with kam.http.get(url, headers={"X-Session-Token": platform.acme}) as before:
        assert before.status == 200, await before.text()
    # The password changed, and the events closing its sessions were lost (a crash between the
    # change and the closes): the workflow service refuses the older session as KAM does.
    data = KamUserPasswordChanged(user_id=user.user_id, password_hash=user.password_hash, reason="changed")
    await kam.ctx.append(ACCOUNTS_STREAM, [new_event(PASSWORD_CHANGED, data, source="test")])
    async with kam.http.get(url, headers={"X-Session-Token": platform.acme}) as after:
        assert after.status == 401 and "password changed" in (await after.json())["message"]
    # A rehash at login (the same password) closes nothing.
    rehash = KamUserPasswordChanged(user_id=user.user_id, password_hash=user.password_hash, reason="rehashed")
    await kam.ctx.append(ACCOUNTS_STREAM, [new_event(PASSWORD_CHANGED, rehash, source="test")])
    async with kam.http.get(url, headers={"X-Session-Token": platform.globex}) as other:
        assert other.status == 200
