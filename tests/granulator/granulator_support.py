"""Helpers shared by the granulator tests: a running service on port 0 and a worker token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from nexus.auth import issue_key
from nexus.bus import Bus
from nexus.bus.memory import MemoryBus
from nexus.eventlog import EventLog
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.granulator import bootstrap, load_settings
from nexus.services.granulator.generators import Generator


def settings_for(tmp_path: Path, **env: str):  # type: ignore[no-untyped-def]
    base = {
        "NEXUS_DATA_DIR": str(tmp_path),
        "NEXUS_GRANULATOR_PORT": "0",
        "NEXUS_GRANULATOR_REPLICA_ID": "replica-a",
    }
    base.update(env)
    return load_settings(base)


@dataclass
class Running:
    service: Service
    url: str
    token: str
    session: aiohttp.ClientSession

    @property
    def worker(self):  # type: ignore[no-untyped-def]
        return self.service.worker  # type: ignore[attr-defined]

    def headers(self, worker_id: str = "orchestrator", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Worker-ID": worker_id, **extra}

    async def post(self, path: str, body: Any, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.post(
            self.url + path, json=body, headers=dict(self.headers() if headers is None else headers)
        ) as resp:
            return resp.status, await resp.json()


@asynccontextmanager
async def running_granulator(
    tmp_path: Path,
    *,
    log: EventLog,
    raw: MemoryRaw | None = None,
    bus: Bus | None = None,
    generator: Generator | None = None,
    token: str | None = None,
    **env: str,
) -> AsyncIterator[Running]:
    """A granulator on port 0 (memory bus and Raw unless given) with a freshly issued worker token."""
    if bus is None:
        bus = MemoryBus()
        await bus.ensure_streams()
    raw = raw if raw is not None else MemoryRaw()
    service = await bootstrap(settings_for(tmp_path, **env), log=log, bus=bus, raw=raw, generator=generator)
    if token is None:
        token = (await issue_key(log, "worker", "orchestrator")).secret
    await service.start()
    session = aiohttp.ClientSession()
    try:
        yield Running(service, f"http://127.0.0.1:{service.port}", token, session)
    finally:
        await session.close()
        await service.stop()


def handshake_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "stage": "content_granulation",
        "execution_id": "exec_123",
        "input": {"topic": "AI Tools Market Analysis", "structure_type": "research_report"},
        "requirements": {"memory_mb": 128, "timeout_ms": 60000},
    }
    body.update(overrides)
    return body
