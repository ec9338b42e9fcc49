"""KAM's login: failures are rate limited (429 with Retry-After), Argon2 runs off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import nexus.services.kam.accounts as kam_api
from nexus.auth._ratelimit import SlidingWindowLimiter
from nexus.eventlog.memory import MemoryEventLog
from nexus.runtime import Service
from nexus.services.kam.bootstrap import bootstrap
from nexus.services.kam.settings import load_settings

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def kam(nats_server: str, tmp_path: Path) -> AsyncIterator[str]:
    env = {
        "NEXUS_NATS_URL": nats_server,
        "NEXUS_DATA_DIR": str(tmp_path),
        "NEXUS_ADMIN_PASSWORD": PASSWORD,
        "NEXUS_LOGIN_FAILURES_PER_USER": "3",
        "NEXUS_LOGIN_FAILURES_PER_ADDRESS": "5",
    }
    settings = dataclasses.replace(load_settings(env), port=0)
    service: Service = await bootstrap(settings, log=MemoryEventLog())
    await service.start()
    try:
        yield f"http://127.0.0.1:{service.port}"
    finally:
        await service.stop()


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (any 127.x.y.z is loopback on Linux)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def login(http: aiohttp.ClientSession, base: str, user: str, password: str) -> tuple[int, dict, str | None]:  # type: ignore[type-arg]
    async with http.post(f"{base}/v1/login", json={"user": user, "password": password}) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def test_failures_per_user_are_limited_and_the_right_password_works_elsewhere(kam: str) -> None:
    async with session_from("127.0.0.1") as attacker, session_from("127.0.0.2") as owner:
        # Three wrong passwords for admin from one address: 401 each time…
        for _ in range(3):
            status, body, _ = await login(attacker, kam, "admin", "guess")
            assert status == 401 and body["error"] == "unauthorized"
        # …then 429 with Retry-After, even with the right password (no oracle while limited).
        for password in ("guess", PASSWORD):
            status, body, retry_after = await login(attacker, kam, "admin", password)
            assert status == 429, body
            assert body["error"] == "too_many_requests" and "retry in" in body["message"]
            assert retry_after is not None and 1 <= int(retry_after) <= 60
        # The admin, from another address, still logs in.
        status, body, _ = await login(owner, kam, "admin", PASSWORD)
        assert status == 200 and body == {"user": "admin", "role": "admin"}


async def test_failures_per_address_are_limited_across_users(kam: str) -> None:
    async with session_from("127.0.0.3") as sprayer:
        # Five failures over five user names (each under its own limit of 3)…
        for i in range(5):
            status, _, _ = await login(sprayer, kam, f"user{i}", "guess")
            assert status == 401
        # …exhaust the address: a sixth user name is refused without being checked.
        status, body, retry_after = await login(sprayer, kam, "user9", "guess")
        assert status == 429 and retry_after is not None, body


async def test_a_success_does_not_count_as_a_failure(kam: str) -> None:
    async with session_from("127.0.0.4") as http:
        for _ in range(10):
            status, _, _ = await login(http, kam, "admin", PASSWORD)
            assert status == 200


async def test_healthz_answers_while_ten_logins_are_verified(kam: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = kam_api.verify_password

    def slow_verify(password_hash: str, password: str) -> bool:
        # Argon2 made slow enough that running it on the event loop would block healthz.
        time.sleep(1.0)
        return real(password_hash, password)

    monkeypatch.setattr(kam_api, "verify_password", slow_verify)
    # Ten clients, each from its own address, so no limit refuses any of them.
    sessions = [session_from(f"127.0.1.{i + 1}") for i in range(10)]
    try:
        logins = [
            asyncio.create_task(login(http, kam, "admin", PASSWORD if i == 0 else "wrong"))
            for i, http in enumerate(sessions)
        ]
        await asyncio.sleep(0.2)  # the verifications are under way
        started = time.perf_counter()
        async with session_from("127.0.0.1") as http, http.get(f"{kam}/healthz") as r:
            assert r.status == 200
        elapsed = time.perf_counter() - started
        assert not all(task.done() for task in logins), "the logins finished before healthz was asked"
        assert elapsed < 0.5, f"healthz took {elapsed:.2f} s while logins were verified"
        results = await asyncio.gather(*logins)
    finally:
        for http in sessions:
            await http.close()
    assert [status for status, _, _ in results] == [200] + [401] * 9


def test_the_limiter_slides_and_forgets() -> None:
    now = [100.0]
    limiter = SlidingWindowLimiter(2, 10.0, max_keys=3, clock=lambda: now[0])
    limiter.hit("a")
    now[0] = 104.0
    limiter.hit("a")
    assert limiter.retry_after("a") == pytest.approx(6.0) and limiter.retry_after_seconds("a") == 6
    now[0] = 110.5  # the first hit left the window
    assert limiter.retry_after("a") == 0.0
    limiter.hit("a")
    limiter.forgive("a")
    assert limiter.retry_after("a") == 0.0
    for key in ("b", "c", "d", "e"):
        limiter.hit(key)
    assert len(limiter) == 3  # the least recently hit keys were dropped
    limiter.reset("e")
    assert limiter.retry_after("e") == 0.0
    with pytest.raises(ValueError, match="limit"):
        SlidingWindowLimiter(0, 1.0)
