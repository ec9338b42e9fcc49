"""KAM started for real as ``python -m nexus.services.kam``: endpoints, errors, readiness, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from processes import free_port
from prometheus_client.parser import text_string_to_metric_families

from nexus.bus.embedded import EmbeddedNats

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def wait_status(http: aiohttp.ClientSession, url: str, status: int, within: float = 20.0) -> dict:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: object = None
    while loop.time() < deadline:
        try:
            async with http.get(url) as response:
                last = response.status
                if response.status == status:
                    return await response.json()  # type: ignore[no-any-return]
        except aiohttp.ClientError as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {within} s (last: {last})")


@pytest.fixture
async def kam(embedded_nats: EmbeddedNats, tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    env = {
        **os.environ,
        "NEXUS_KAM_PORT": str(port),
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
        "NEXUS_NATS_URL": embedded_nats.client_url("kam"),
        "NEXUS_MAX_BODY_BYTES": "4096",
        "NEXUS_ADMIN_PASSWORD": "correct horse battery",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus.services.kam",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_kam_serves_the_platform_endpoints_and_survives_bad_requests(
    kam: tuple[asyncio.subprocess.Process, str],
) -> None:
    process, base = kam
    async with aiohttp.ClientSession() as http:
        ready = await wait_status(http, f"{base}/readyz", 200)
        assert ready["status"] == "ready" and ready["checks"] == {"nats": "ok", "log": "ok"}
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        # An oversized body: 413; bad JSON: 400 naming the problem; the service keeps running.
        async with http.post(f"{base}/v1/login", data=b"{" + b" " * 10_000 + b"}") as r:
            assert r.status == 413 and "4096 bytes" in (await r.json())["message"]
        async with http.post(
            f"{base}/v1/login", data=b'{"user": "admin",', headers={"Content-Type": "application/json"}
        ) as r:
            body = await r.json()
            assert r.status == 400 and "not valid JSON" in body["message"]
        async with http.post(f"{base}/v1/login", json={"user": "admin"}) as r:
            assert r.status == 400 and "password" in (await r.json())["message"]
        async with http.post(f"{base}/v1/login", json={"user": "admin", "password": "correct horse battery"}) as r:
            assert r.status == 200 and (await r.json()) == {"user": "admin", "role": "admin"}
        async with http.post(f"{base}/v1/login", json={"user": "admin", "password": "wrong"}) as r:
            assert r.status == 401
        async with http.get(f"{base}/v1/whoami") as r:
            assert r.status == 401
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        async with http.get(f"{base}/openapi.json") as r:
            document = await r.json()
    requests = families["nexus_http_requests"]
    assert any(
        s.labels == {"method": "POST", "route": "/v1/login", "status": "413"} and s.value == 1 for s in requests.samples
    )
    assert "nexus_http_request_duration_seconds" in families
    assert "nexus_event_log_append_duration_seconds" in families
    assert document["openapi"] == "3.1.0" and document["info"]["title"] == "Nexus KAM"
    assert {"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/login", "/v1/whoami"} <= set(document["paths"])
    assert document["paths"]["/v1/whoami"]["get"]["security"] == [{"apiKey": []}]
    assert process.returncode is None

    # SIGTERM: a graceful stop with status 0.
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 5) == 0
    assert process.stdout is not None
    output = (await process.stdout.read()).decode()
    assert '"message": "kam stopped"' in output
    assert "correct horse battery" not in output


async def test_readyz_is_503_while_nats_is_down(
    kam: tuple[asyncio.subprocess.Process, str], embedded_nats: EmbeddedNats
) -> None:
    process, base = kam
    async with aiohttp.ClientSession() as http:
        await wait_status(http, f"{base}/readyz", 200)
        await embedded_nats.kill()
        body = await wait_status(http, f"{base}/readyz", 503, within=10)
        assert body["status"] == "not_ready" and body["failed"] == ["nats"]
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
    assert process.returncode is None
