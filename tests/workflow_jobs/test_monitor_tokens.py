"""The job monitor at seed 000's path, and the credentials a browser's EventSource can send: the
session cookie, or a short-lived ?access_token= for one stream; never a long-lived key in a URL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from anomaly_platform import SEED_ANOMALY, Platform, running

from nexus.auth import (
    SESSION_COOKIE,
    SESSIONS_STREAM,
    CredentialRefused,
    KeyInfo,
    hash_secret,
    issue_key,
    new_session_token,
    revoke_key,
)
from nexus.proto import new_event
from nexus.proto.events.kam import KamSessionClosed, KamSessionOpened
from nexus.services.workflow.streamtokens import StreamTokens, secret_in_query

ENV = {"NEXUS_ANOMALY_WORKFLOW": "gaia_anomaly_review", "NEXUS_STREAM_TOKEN_TTL_SECONDS": "60"}


async def _job(session: aiohttp.ClientSession, platform: Platform, tenant: str = "alpha") -> str:
    async with session.post(f"{platform.url}/anomalies", json=SEED_ANOMALY, headers=platform.headers(tenant)) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["jobExecutionId"])


async def _frames(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = await resp.read()
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith(b"data: ")]


async def _token(session: aiohttp.ClientSession, platform: Platform, job_id: str, tenant: str = "alpha") -> Any:
    async with session.post(f"{platform.url}/job/{job_id}/monitor/token", headers=platform.headers(tenant)) as resp:
        return resp.status, await resp.json()


async def test_the_monitor_is_served_at_the_seeds_path_for_its_owner_only(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        job_id = await _job(session, platform)
        async with session.get(f"{platform.url}/api/opus/job/{job_id}/monitor", headers=platform.headers()) as resp:
            frames = await _frames(resp)
        assert frames[-1]["status"] == "COMPLETED" and frames[-1]["jobExecutionId"] == job_id
        async with session.get(
            f"{platform.url}/api/opus/job/{job_id}/monitor", headers=platform.headers("beta")
        ) as resp:
            assert resp.status == 404
        async with session.get(f"{platform.url}/api/opus/job/{job_id}/monitor") as resp:
            assert resp.status == 401


async def test_a_stream_token_opens_its_one_stream_with_no_header(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        job_id, other_job = await _job(session, platform), await _job(session, platform)
        status, granted = await _token(session, platform, job_id)
        assert status == 201 and granted["accessToken"].startswith("nxs_")
        assert granted["path"] == f"/api/opus/job/{job_id}/monitor"
        assert 0 < granted["expiresAt"] - time.time() <= 61
        # What a browser does: new EventSource(url), no header, no cookie.
        async with session.get(granted["url"]) as resp:
            assert (await _frames(resp))[-1]["status"] == "COMPLETED"
        token = {"access_token": granted["accessToken"]}
        # Scoped to that one stream: not another job's monitor, not the job's other routes.
        for path in (f"/api/opus/job/{other_job}/monitor", f"/job/{job_id}/monitor", f"/job/{job_id}/status"):
            async with session.get(f"{platform.url}{path}", params=token) as resp:
                assert resp.status == 401, path
                assert "access_token" in (await resp.json())["error"]
        async with session.post(f"{platform.url}/anomalies", params=token, json=SEED_ANOMALY) as resp:
            assert resp.status == 401
        # Altered: refused.
        forged = {"access_token": granted["accessToken"][:-2] + ("AA" if granted["accessToken"][-2:] != "AA" else "BB")}
        async with session.get(f"{platform.url}{granted['path']}", params=forged) as resp:
            assert resp.status == 401


async def test_another_clients_job_gets_no_token_and_a_token_adds_no_right(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        job_id = await _job(session, platform)
        status, _ = await _token(session, platform, job_id, tenant="beta")
        assert status == 404
        # Beta mints a token for alpha's stream path through the generic route: it opens nothing.
        async with session.post(
            f"{platform.url}/stream-tokens",
            json={"path": f"/api/opus/job/{job_id}/monitor"},
            headers=platform.headers("beta"),
        ) as resp:
            assert resp.status == 201
            url = (await resp.json())["url"]
        async with session.get(url) as resp:
            assert resp.status == 404
        async with session.post(
            f"{platform.url}/stream-tokens", json={"path": f"/job/{job_id}/status"}, headers=platform.headers()
        ) as resp:
            assert resp.status == 400 and "not a stream" in (await resp.json())["message"]


async def test_a_token_dies_with_its_key(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        job_id = await _job(session, platform)
        short_lived = await issue_key(platform.log, "client", "alpha")
        async with session.post(
            f"{platform.url}/job/{job_id}/monitor/token", headers={"x-service-key": short_lived.secret}
        ) as resp:
            url = (await resp.json())["url"]
        await revoke_key(platform.log, short_lived.info.key_id)
        async with session.get(url) as resp:
            assert resp.status == 401 and "revoked" in (await resp.json())["error"]


def test_a_token_expires_and_cannot_claim_a_long_life() -> None:
    now = [1_800_000_000.0]
    tokens = StreamTokens(b"k" * 32, ttl_seconds=60, clock=lambda: now[0])
    token, expires_at = tokens.mint(KeyInfo(key_id="k1", kind="client", owner="alpha"), "/job/j1/monitor")
    assert expires_at == now[0] + 60
    assert tokens.verify(token, "/job/j1/monitor").owner == "alpha"
    with pytest.raises(CredentialRefused, match="opens /job/j1/monitor only"):
        tokens.verify(token, "/job/j2/monitor")
    now[0] += 60
    with pytest.raises(CredentialRefused, match="expired"):
        tokens.verify(token, "/job/j1/monitor")
    # Another minter's token (another key): refused, as is a lifetime beyond the limit.
    with pytest.raises(CredentialRefused, match="signature"):
        StreamTokens(b"x" * 32).verify(token, "/job/j1/monitor")
    with pytest.raises(ValueError):
        StreamTokens(b"k" * 32, ttl_seconds=3600)
    with pytest.raises(ValueError, match="not a stream"):
        tokens.mint(KeyInfo(key_id="k1", kind="client", owner="alpha"), "/job/j1/status")


async def test_the_session_cookie_opens_the_monitor_and_its_token_closes_with_it(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        job_id = await _job(session, platform)
        session_id, secret = new_session_token()
        opened = KamSessionOpened(
            session_id=session_id,
            hash=hash_secret(secret),
            user_id="u-1",
            expires_at=time.time() + 600,
            owner="alpha",
            scopes=[],
        )
        await platform.log.append(SESSIONS_STREAM, [new_event("nexus.kam.session.opened", opened, source="test")])
        cookie = {"Cookie": f"{SESSION_COOKIE}={secret}"}
        async with session.get(f"{platform.url}/api/opus/job/{job_id}/monitor", headers=cookie) as resp:
            assert (await _frames(resp))[-1]["status"] == "COMPLETED"
        # A token minted in the session (header token: no CSRF needed) ends when the session does.
        async with session.post(
            f"{platform.url}/job/{job_id}/monitor/token", headers={"X-Session-Token": secret}
        ) as resp:
            assert resp.status == 201, await resp.text()
            url = (await resp.json())["url"]
        closed = KamSessionClosed(session_id=session_id)
        await platform.log.append(SESSIONS_STREAM, [new_event("nexus.kam.session.closed", closed, source="test")])
        async with session.get(url) as resp:
            assert resp.status == 401 and "closed" in (await resp.json())["error"]


async def test_a_long_lived_credential_in_a_url_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        job_id = await _job(session, platform)
        _, session_token = new_session_token()
        key = platform.keys["alpha"]
        cases = [
            (f"/api/opus/job/{job_id}/monitor", {"access_token": key}),
            (f"/job/{job_id}/monitor", {"x-service-key": key}),
            ("/jobs", {"api_key": key}),
            ("/workflows", {"token": session_token}),
        ]
        for path, query in cases:
            async with session.get(f"{platform.url}{path}", params=query) as resp:
                assert resp.status == 400, (path, resp.status)
                body = await resp.json()
                text = body.get("error", "") + body.get("message", "")
                assert "never put one in a URL" in text, body
        # Even beside a valid header: the key in the URL is what is refused.
        async with session.get(f"{platform.url}/jobs", params={"k": key}, headers=platform.headers()) as resp:
            assert resp.status == 400


def test_what_counts_as_a_long_lived_credential_in_a_query() -> None:
    def named(query: str) -> str | None:
        return secret_in_query(make_mocked_request("GET", f"/x?{query}"))

    assert named("a=nxk_0123456789abcdef.secret") == "a"
    assert named("b=nxw_0123456789abcdef.secret") == "b"
    assert named("d=nxd_key.payload.sig") == "d"
    assert named(f"s={new_session_token()[1]}") == "s"
    assert named("access_token=nxs_payload.sig&limit=5") is None
    assert named("sig=abc&exp=1&max=2") is None
