"""Malformed and oversized input on every service's HTTP API: a JSON error that names the problem,
and the service still answers a valid request afterwards.

Each service is built by its own bootstrap and serves on a real aiohttp server (port 0); the
log and the bus are the in-memory adapters (the HTTP edge is what is under test here).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service

MAX_BODY = 4096


@dataclass
class Case:
    """One service and the routes its checks use."""

    name: str
    service: Service
    headers: dict[str, str]
    json_route: str | None = None
    """A POST route that decodes a JSON body (None: the service has none)."""
    wrong_types: tuple[Any, str] | None = None
    """A body with a field of the wrong type, and the field the error must name."""
    valid: Callable[[aiohttp.ClientSession, str], Awaitable[None]] | None = None
    """Sends a valid request and checks its answer."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"


async def _bus() -> MemoryBus:
    bus = MemoryBus()
    await bus.ensure_streams()
    return bus


def _env(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    return {
        "NEXUS_DATA_DIR": str(tmp_path / name),
        f"NEXUS_{name.upper()}_PORT": "0",
        "NEXUS_MAX_BODY_BYTES": str(MAX_BODY),
        **extra,
    }


async def _kam(tmp_path: Path) -> Case:
    from nexus.services.kam.bootstrap import bootstrap
    from nexus.services.kam.settings import load_settings

    password = secrets.token_urlsafe(16)
    settings = load_settings(_env(tmp_path, "kam", NEXUS_ADMIN_USER="root", NEXUS_ADMIN_PASSWORD=password))
    service = await bootstrap(settings, log=MemoryEventLog(), bus=await _bus())

    async def valid(http: aiohttp.ClientSession, url: str) -> None:
        async with http.post(url + "/v1/login", json={"user": "root", "password": password}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["role"] == "admin"

    return Case("kam", service, {}, "/v1/login", ({"user": 7, "password": "x"}, "$.user"), valid)


async def _workflow(tmp_path: Path) -> Case:
    from nexus.services.workflow.bootstrap import bootstrap
    from nexus.services.workflow.settings import load_settings

    settings = load_settings(_env(tmp_path, "workflow", NEXUS_WORKFLOW_BUNDLED="none"))
    service = await bootstrap(settings, log=MemoryEventLog(), bus=await _bus(), raw=MemoryRaw())
    case = Case("workflow", service, {}, "/executions", ({"workflow_id": 12, "input": {}}, "workflow_id"))

    async def valid(http: aiohttp.ClientSession, url: str) -> None:
        definition = {"id": "noop", "steps": [{"id": "w", "type": "wait_event", "event": "x.y", "timeout_seconds": 60}]}
        async with http.post(url + "/workflows", data=json.dumps(definition), headers=case.headers) as resp:
            assert resp.status == 201, await resp.text()
        body = {"workflow_id": "noop", "input": {}}
        async with http.post(url + "/executions", json=body, headers=case.headers) as resp:
            assert resp.status == 202, await resp.text()
            assert (await resp.json())["id"]

    case.valid = valid
    return case


async def _granulator(tmp_path: Path) -> Case:
    from nexus.services.granulator import bootstrap, load_settings

    settings = load_settings(_env(tmp_path, "granulator", NEXUS_GRANULATOR_REPLICA_ID="r"))
    service = await bootstrap(settings, log=MemoryEventLog(), bus=await _bus(), raw=MemoryRaw())
    handshake = {
        "stage": "content_granulation",
        "execution_id": "exec_valid",
        "input": {"topic": "Tea", "structure_type": "research_report"},
        "requirements": {"memory_mb": 128, "timeout_ms": 60000},
    }
    case = Case(
        "granulator",
        service,
        {},
        "/api/handshake",
        ({**handshake, "requirements": {"memory_mb": "lots", "timeout_ms": 60000}}, "memory_mb"),
    )

    async def valid(http: aiohttp.ClientSession, url: str) -> None:
        async with http.post(url + "/api/handshake", json=handshake, headers=case.headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["accepted"] is True

    case.valid = valid
    return case


async def _studio(tmp_path: Path) -> Case:
    from nexus.services.studio.bootstrap import bootstrap
    from nexus.services.studio.settings import load_settings

    service = await bootstrap(
        load_settings(_env(tmp_path, "studio")), log=MemoryEventLog(), bus=await _bus(), raw=MemoryRaw()
    )
    case = Case("studio", service, {})

    async def valid(http: aiohttp.ClientSession, url: str) -> None:
        async with http.get(url + "/v1/blobs", headers=case.headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["keys"] == []

    case.valid = valid
    return case


BUILDERS = {"kam": _kam, "workflow": _workflow, "granulator": _granulator, "studio": _studio}


@pytest.fixture(params=list(BUILDERS))
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Case]:
    built = await BUILDERS[request.param](tmp_path)
    await built.service.start()
    if built.name == "granulator":
        token = (await issue_key(built.service.log, "worker", "orchestrator")).secret
        built.headers = {"Authorization": f"Bearer {token}", "X-Worker-ID": "orchestrator"}
    elif built.name in ("workflow", "studio"):
        key = (await issue_key(built.service.log, "client", "resilience")).secret
        built.headers = {"x-service-key": key}
    try:
        yield built
    finally:
        await built.service.stop()


async def _error(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.content_type == "application/json", (resp.status, resp.content_type, await resp.text())
    body = await resp.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    return dict(body)


async def test_bad_input_gets_a_clear_json_error_and_the_service_goes_on(case: Case) -> None:
    post_route = case.json_route or "/v1/blobs"
    async with aiohttp.ClientSession() as http:
        # A declared body over NEXUS_MAX_BODY_BYTES: refused before any handler reads it.
        big = b'{"pad": "' + b"x" * (MAX_BODY * 2) + b'"}'
        async with http.post(case.url + post_route, data=big, headers=case.headers) as resp:
            assert resp.status == 413, await resp.text()
            body = await _error(resp)
            assert body["error"] == "payload_too_large" and str(MAX_BODY) in body["message"], body

        if case.json_route is not None:
            # The same body sent chunked (no Content-Length): the limit holds when the body is read.
            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(big), 1024):
                    yield big[start : start + 1024]

            async with http.post(case.url + case.json_route, data=chunks(), headers=case.headers) as resp:
                assert resp.status == 413, await resp.text()
                assert (await _error(resp))["error"] == "payload_too_large"

            # Not JSON: 400 saying so.
            headers = {**case.headers, "Content-Type": "application/json"}
            async with http.post(case.url + case.json_route, data=b"{,}", headers=headers) as resp:
                assert resp.status == 400, await resp.text()
                body = await _error(resp)
                assert "JSON" in body["message"], body

            # Wrong types on a typed route: 400 naming the field.
            assert case.wrong_types is not None
            wrong, field_name = case.wrong_types
            async with http.post(case.url + case.json_route, json=wrong, headers=case.headers) as resp:
                assert resp.status == 400, await resp.text()
                body = await _error(resp)
                assert field_name in json.dumps(body), body

        # An unknown route: a JSON 404 naming the path.
        async with http.get(case.url + "/no/such/route", headers=case.headers) as resp:
            assert resp.status == 404
            body = await _error(resp)
            assert "/no/such/route" in body["message"], body

        # A wrong method on a known route: a JSON 405.
        async with http.delete(case.url + "/healthz") as resp:
            assert resp.status == 405
            assert "DELETE" in (await _error(resp))["message"]

        # After all that the service still serves valid requests.
        assert case.valid is not None
        await case.valid(http, case.url)
        async with http.get(case.url + "/readyz") as resp:
            assert resp.status == 200, await resp.text()
