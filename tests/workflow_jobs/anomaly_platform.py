"""A workflow service for the anomaly and monitor tests: the real routes (every optional module),
a real engine on an in-memory log and bus, and a stub GAIA service behind the workflow's step."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw import open_raw
from nexus.runtime import Service
from nexus.services.workflow import api
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.engine import WorkflowEngine
from nexus.services.workflow.identity import ServiceIdentity
from nexus.services.workflow.registry import WorkflowRegistry
from nexus.services.workflow.settings import load_settings
from nexus.services.workflow.view import ExecutionView

FILE = {"type": "string", "contentMediaType": "application/octet-stream"}
SCHEMA = {
    "id": "gaia_anomaly_v1",
    "provider_id": "gaia",
    "name": "A GAIA anomaly",
    "version": "1.0",
    "type": "input",
    # Seed 000's example schema: opaque field names, one of each job type.
    "definition": {
        "type": "object",
        "required": ["workflow_input_we4tej0ly", "workflow_input_a0hk6ujuo"],
        "properties": {
            "workflow_input_we4tej0ly": {"type": "string"},
            "workflow_input_a0hk6ujuo": {"type": "number"},
            "workflow_input_h69vx5i4a": FILE,
            "workflow_input_m2z6rkzgj": {"type": "boolean"},
            "workflow_input_2kbsjrx1y": {"type": "array", "items": {"type": "string"}},
            "workflow_input_bzti690ga": {"type": "object"},
            "workflow_input_k3ayfjyh7": {"type": "string", "format": "date-time"},
            "workflow_input_auqgnzk8d": {"type": "array", "items": FILE},
        },
    },
}
WORKFLOW = {
    "id": "gaia_anomaly_review",
    "provider_id": "gaia",
    "name": "GAIA anomaly review",
    "input_schema_id": "gaia_anomaly_v1",
    "active": True,
    "steps": [
        {
            "id": "review",
            "name": "Review",
            "type": "api_call",
            "service": "gaia",
            "endpoint": "/review",
            "method": "POST",
            "input_map": {"payload": "$.input"},
            "timeout_seconds": 10,
            "retry": {"max_attempts": 1, "backoff_ms": 10},
        }
    ],
}
SEED_ANOMALY: dict[str, Any] = {
    "id": 123,
    "title": "Seismic Activity",
    "description": "Unusual patterns",
    "severity": "high",
    "confidence": 0.95,
    "location": {"lat": 38.3, "lng": 142.4},
    "timestamp": "2025-11-19T10:00:00Z",
    "modalities": ["seismic", "environmental"],
    "verified": True,
}


@dataclass
class Platform:
    url: str
    keys: dict[str, str]
    """Tenant → API key."""
    log: MemoryEventLog
    bus: MemoryBus
    service: Service
    reviewed: list[dict[str, Any]] = field(default_factory=list)
    """What the stub GAIA service received (the workflow input), with the sizes of its files."""

    def headers(self, tenant: str = "alpha") -> dict[str, str]:
        return {"x-service-key": self.keys[tenant]}


async def _stub(reviewed: list[dict[str, Any]]) -> web.Application:
    sessions: list[aiohttp.ClientSession] = []

    async def review(request: web.Request) -> web.Response:
        payload = (await request.json())["payload"]
        sizes = []
        urls = [payload.get("workflow_input_h69vx5i4a"), *(payload.get("workflow_input_auqgnzk8d") or [])]
        for url in urls:
            if url:
                # The file URL is a capability: the service fetches it with no key.
                async with sessions[0].get(url) as resp:
                    sizes.append(len(await resp.read()) if resp.status == 200 else -resp.status)
        reviewed.append({"payload": payload, "file_sizes": sizes})
        return web.json_response({"verdict": "reviewed", "file_sizes": sizes})

    app = web.Application()
    app.router.add_post("/review", review)

    async def client(_app: web.Application) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession())
        yield
        await sessions[0].close()

    app.cleanup_ctx.append(client)
    return app


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, env: Mapping[str, str] | None = None, *, log: MemoryEventLog | None = None
) -> AsyncIterator[Platform]:
    """The workflow service on port 0, with clients ``alpha`` and ``beta``."""
    log = log or MemoryEventLog()
    bus = MemoryBus()
    await bus.ensure_streams()
    reviewed: list[dict[str, Any]] = []
    async with TestServer(await _stub(reviewed), host="127.0.0.1", port=0) as stub:
        settings = load_settings(
            {
                "NEXUS_SERVICE_GAIA": str(stub.make_url("")).rstrip("/"),
                "NEXUS_JOB_SSE_KEEPALIVE": "0.1",
                "NEXUS_WORKFLOW_BUNDLED": "none",
                **(env or {}),
            }
        )
        raw = await open_raw(f"file://{tmp_path / 'raw'}")
        registry = WorkflowRegistry(log, settings.services)
        await registry.register_schema(SCHEMA)
        await registry.register_workflow(WORKFLOW)
        view = ExecutionView(log)
        await view.load()
        view.start_tail()
        engine = WorkflowEngine(
            log, registry, view, services=settings.services, platform_services=settings.platform_services
        )
        engine.identity = await ServiceIdentity.issue(log, "anomaly-tests")
        await engine.start_processing()
        ctx = WorkflowContext(
            settings=settings, log=log, bus=bus, raw=raw, engine=engine, registry=registry, views=view
        )
        service = Service(settings, log=log, bus=bus)
        service.accept_sessions()
        assert "anomalies" in api.install_optional(service, ctx)
        keys = {tenant: (await issue_key(log, "client", tenant)).secret for tenant in ("alpha", "beta")}
        try:
            async with TestServer(service.app, host="127.0.0.1", port=0) as server:
                yield Platform(str(server.make_url("")).rstrip("/"), keys, log, bus, service, reviewed)
        finally:
            await engine.stop_processing()
            await view.stop()
            await log.close()


async def wait_status(
    session: aiohttp.ClientSession, platform: Platform, job_id: str, tenant: str = "alpha", within: float = 15.0
) -> dict[str, Any]:
    """The job's status once it is final (polling, as seed 000's step 7)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with session.get(f"{platform.url}/job/{job_id}/status", headers=platform.headers(tenant)) as resp:
            body: dict[str, Any] = await resp.json()
            if resp.status == 200 and body["status"] != "IN PROGRESS":
                return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} did not finish: {resp.status} {body}")
        await asyncio.sleep(0.05)
