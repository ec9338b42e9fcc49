"""The relay process serves /healthz, /readyz and /metrics: a relay that keeps failing is not ready."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

from nexus.bus import BusError
from nexus.bus.jetstream import PendingAcks
from nexus.proto import CloudEvent, new_event
from nexus.relay.__main__ import build
from nexus.runtime import ServiceSettings

pytestmark = pytest.mark.nats


async def _readiness(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with http.get(url + "/readyz") as resp:
        return resp.status, await resp.json()


async def test_the_relay_process_is_ready_only_while_it_relays(nats_server: str, tmp_path: Path) -> None:
    env = {
        "NEXUS_NATS_URL": nats_server,
        "NEXUS_EVENT_LOG_URL": "memory://",
        "NEXUS_DATA_DIR": str(tmp_path),
        "NEXUS_RELAY_PORT": "0",
    }
    service = await build(ServiceSettings.from_env("relay", env))
    send_events = service.bus.send_events  # type: ignore[attr-defined]
    broken = False

    async def flaky(events: Sequence[CloudEvent]) -> PendingAcks:
        if broken:
            raise BusError("simulated: JetStream is not answering")
        return await send_events(events)

    service.bus.send_events = flaky  # type: ignore[attr-defined]
    await service.start()
    url = f"http://127.0.0.1:{service.port}"
    try:
        async with aiohttp.ClientSession() as http:
            status, body = await _readiness(http, url)
            assert status == 200 and body["checks"]["relay"] == "ok", body  # type: ignore[index]
            # Publishing starts failing: after the first failed attempt the process says so.
            broken = True
            await service.log.append("s", [new_event("nexus.test.thing.done", {}, source="t")])
            for _ in range(100):
                status, body = await _readiness(http, url)
                if status == 503:
                    break
                await asyncio.sleep(0.05)
            assert status == 503 and "simulated" in str(body["checks"]["relay"]), body  # type: ignore[index]
            async with http.get(url + "/metrics") as resp:
                assert "nexus_relay_healthy 0.0" in await resp.text()
            # It recovers, and says that too.
            broken = False
            for _ in range(200):
                status, body = await _readiness(http, url)
                if status == 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, body
    finally:
        await service.stop()
