"""What a review of KAM found, each shown fixed: an orchestrator's report racing the watcher records
one outcome (and bills it once); only the named orchestrators may report; logins are limited per
user name from every address too; a notification stream ends with its session; catch-ups of a
burst of unknown sessions are shared."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from factory_harness import ALPHA, Factory, factory, template
from inprocess import KAM_ADMIN, build

from nexus.auth import issue_key
from nexus.proto import new_event
from nexus.services.kam import worker_sessions
from nexus.services.kam.accounts import address_bucket
from nexus.services.kam.delivery import KAM_CONTEXT
from nexus.services.kam.state import COST_RECORDED, request_stream

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Factory]:
    async for built in factory(tmp_path):
        yield built


async def test_an_orchestrator_report_racing_the_watcher_records_one_outcome(
    platform: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await platform.add_template(template("held", "kam_held"))
    request_id = await platform.add_request(ALPHA, "held")
    status, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    assert status == 202, started
    execution_id = started["execution_id"]
    real = worker_sessions.WorkerSessionRoutes._reported

    async def slow_report(self: Any, *args: Any, **kwargs: Any) -> Any:
        # While the report is being prepared, the workflow's own end is recorded by the watcher.
        platform.stub.release.set()
        await platform.until_status(request_id, "completed", timeout=15)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(worker_sessions.WorkerSessionRoutes, "_reported", slow_report)
    body = {
        "execution_id": execution_id,
        "status": "completed",
        "metrics": {"total_time_ms": 1, "stages_completed": 9, "tokens_used": 999_999, "estimated_cost": 99.0},
    }
    status, answer = await platform.call("POST", f"/api/worker-sessions/{execution_id}/complete", "worker", body)
    assert status == 409, answer
    events = await platform.log.read_stream(request_stream(request_id))
    assert [e.type for e in events].count("nexus.kam.request.completed") == 1
    costs = [e for e in events if e.type == COST_RECORDED]
    assert sorted(e.data["kind"] for e in costs) == ["run", "stage", "tokens"]
    assert all(e.data["quantity"] != 999_999 for e in costs), "the losing report was billed"


async def test_only_the_named_orchestrators_report_executions(platform: Factory) -> None:
    await platform.add_template(template("held", "kam_held"))
    request_id = await platform.add_request(ALPHA, "held")
    _, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    granulator = await issue_key(platform.log, "worker", "granulator-1")
    platform.headers["granulator"] = {"Authorization": f"Bearer {granulator.secret}"}
    body = {"execution_id": started["execution_id"], "status": "failed"}
    status, refused = await platform.call(
        "POST", f"/api/worker-sessions/{started['execution_id']}/complete", "granulator", body
    )
    assert status == 403 and "NEXUS_KAM_ORCHESTRATORS" in refused["message"]
    platform.stub.release.set()


def test_ipv6_addresses_are_limited_by_their_64() -> None:
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_bucket("192.0.2.7") == "192.0.2.7"
    assert address_bucket("unknown") == "unknown"


async def test_the_per_name_limit_refuses_a_name_guessed_from_many_addresses() -> None:
    from nexus.services.kam.accounts import PER_NAME_FACTOR, LoginLimits
    from nexus.services.kam.settings import load_settings

    limits = LoginLimits(load_settings({"NEXUS_LOGIN_FAILURES_PER_USER": "2"}))
    refused = [limits.refuse(f"ana\x00198.51.100.{n}", f"198.51.100.{n}") for n in range(2 * PER_NAME_FACTOR + 1)]
    assert all(r is None for r in refused[: 2 * PER_NAME_FACTOR])
    last = refused[-1]
    assert last is not None and last.status == 429 and last.headers["Retry-After"]
    # Another user from those addresses is not refused.
    assert limits.refuse("bob\x00198.51.100.1", "198.51.100.1") is None


async def test_a_notification_stream_ends_when_its_session_is_logged_out(tmp_path: Path) -> None:
    kam = await build("kam", tmp_path)
    await kam.start()
    base = f"http://127.0.0.1:{kam.port}/api"
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            login = {"username": KAM_ADMIN[0], "password": KAM_ADMIN[1], "loginType": "admin"}
            async with http.post(f"{base}/auth/login", json=login) as response:
                token = (await response.json())["sessionToken"]
            headers = {"X-Session-Token": token}
            async with http.get(f"{base}/notifications/stream", headers=headers) as stream:
                assert stream.status == 200
                async with http.post(f"{base}/auth/logout", headers=headers) as response:
                    assert response.status == 200
                # The stream ends (its body reaches EOF) instead of going on for ever.
                await asyncio.wait_for(stream.content.read(), 5)
    finally:
        await kam.stop()


async def test_a_burst_of_unknown_sessions_shares_one_catch_up(tmp_path: Path) -> None:
    kam = await build("kam", tmp_path)
    await kam.start()
    ctx = kam.app[KAM_CONTEXT]
    reads = 0
    real = kam.log.read_all

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)  # a slow log: callers arrive while a catch-up is running
        return await real(*args, **kwargs)

    try:
        # Another service's event: the fold does not follow it, so the head is past what it covers.
        [noise] = await kam.log.append("elsewhere", [new_event("nexus.test.noise", {"n": 1}, source="test")])
        kam.log.read_all = counted  # type: ignore[method-assign]  # counts the reads of this test
        await asyncio.gather(*(ctx.caught_up(noise.position or 0) for _ in range(50)))
        assert reads <= 2
    finally:
        kam.log.read_all = real  # type: ignore[method-assign]
        await kam.stop()
