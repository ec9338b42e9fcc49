"""Malformed and oversized input on every service's HTTP API: a JSON error that names the problem,
and the service still answers a valid request afterwards.

Each service is built by its own bootstrap and serves on a real aiohttp server (port 0); the
log and the bus are the in-memory adapters (the HTTP edge is what is under test here).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from inprocess import GRANULATOR_HANDSHAKE, SERVICES, build, check_a_valid_request

from nexus.auth import issue_key
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


# Per service: a POST route that decodes JSON, and a body with a field of the wrong type.
JSON_ROUTES: dict[str, tuple[str | None, tuple[Any, str] | None]] = {
    "kam": ("/v1/login", ({"user": 7, "password": "x"}, "$.user")),
    "workflow": ("/executions", ({"workflow_id": 12, "input": {}}, "workflow_id")),
    "granulator": (
        "/api/handshake",
        ({**GRANULATOR_HANDSHAKE, "requirements": {"memory_mb": "lots", "timeout_ms": 60000}}, "memory_mb"),
    ),
    "studio": (None, None),
}
ENV = {"workflow": {"NEXUS_WORKFLOW_BUNDLED": "none"}, "granulator": {"NEXUS_GRANULATOR_REPLICA_ID": "r"}}


@pytest.fixture(params=SERVICES)
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Case]:
    name = request.param
    service = await build(name, tmp_path, NEXUS_MAX_BODY_BYTES=str(MAX_BODY), **ENV.get(name, {}))
    json_route, wrong_types = JSON_ROUTES[name]
    built = Case(name, service, {}, json_route, wrong_types)

    async def valid(http: aiohttp.ClientSession, url: str) -> None:
        await check_a_valid_request(name, http, url, built.headers)

    built.valid = valid
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
