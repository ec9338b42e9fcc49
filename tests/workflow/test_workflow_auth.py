"""Every route of the workflow service needs a client API key, except the platform endpoints and the
presigned upload PUT (which carries its own signature)."""

from __future__ import annotations

import aiohttp
import pytest

from nexus.auth import issue_key, revoke_key

# One route of each family, with a body it would accept once authenticated.
GUARDED = [
    ("POST", "/workflows", {"id": "w", "steps": [{"id": "a", "service": "stub", "endpoint": "/echo"}]}),
    ("GET", "/workflows", None),
    ("GET", "/workflows/w", None),
    ("POST", "/schemas", {"id": "s", "definition": {"type": "object"}}),
    ("GET", "/schemas", None),
    ("GET", "/schemas/s", None),
    ("POST", "/executions", {"workflow_id": "w", "input": {}}),
    ("GET", "/executions", None),
    ("GET", "/executions/x", None),
    ("GET", "/executions/x/events", None),
    ("POST", "/executions/x/cancel", None),
    ("GET", "/executions/x/stream", None),
    ("GET", "/queue/stats", None),
    ("POST", "/triggers", {"id": "t", "event_type": "a", "workflow_id": "w"}),
    ("GET", "/triggers", None),
    ("DELETE", "/triggers/t", None),
    ("POST", "/api/v1/workflow/phase/1", {"user_id": "u"}),
    ("GET", "/api/v1/workflow/phases/u/audit", None),
    ("GET", "/users/u/updates", None),
    ("GET", "/users/u/ws", None),
    ("GET", "/workflow/w", None),
    ("POST", "/job/initiate", {"workflowId": "w"}),
    ("POST", "/job/execute", {"jobExecutionId": "j", "jobPayloadSchemaInstance": {}}),
    ("POST", "/job/batch", {"workflowId": "w", "jobs": []}),
    ("GET", "/job/j/status", None),
    ("GET", "/job/j/results", None),
    ("GET", "/job/j/audit", None),
    ("GET", "/job/j/monitor", None),
    ("POST", "/job/file/upload", {"fileExtension": "txt"}),
]
OPEN = ["/healthz", "/readyz", "/metrics", "/openapi.json"]


@pytest.fixture
async def svc(workflow_service):
    return await workflow_service(modules=True)


async def _call(svc, method, path, body, headers):
    # A session without the fixture's key: only the headers given here.
    async with aiohttp.ClientSession() as http:
        async with http.request(method, svc.url + path, json=body, headers=headers) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_every_route_refuses_a_missing_unknown_or_revoked_key(svc):
    revoked = await issue_key(svc.service.log, "client", "gone")
    await revoke_key(svc.service.log, revoked.info.key_id)
    worker = await issue_key(svc.service.log, "worker", "some-worker")
    unknown = "nxk_0123456789abcdef.not-a-real-secret"
    for method, path, body in GUARDED:
        for headers, why in (
            ({}, "required"),
            ({"x-service-key": unknown}, "not valid"),
            ({"X-API-Key": revoked.secret}, "revoked"),
        ):
            status, content_type, text = await _call(svc, method, path, body, headers)
            assert status == 401, (method, path, headers, status, text)
            assert content_type.startswith("application/json") and why in text, (method, path, text)
        # A worker token is not a client key.
        status, _, text = await _call(svc, method, path, body, {"x-service-key": worker.secret})
        assert status == 403, (method, path, status, text)


async def test_a_valid_key_in_either_header_passes(svc):
    for header in ("x-service-key", "X-API-Key"):
        for method, path, body in GUARDED:
            if path.endswith(("/stream", "/updates", "/ws", "/monitor")):
                continue  # long-lived answers; their guard is covered above
            status, _, text = await _call(svc, method, path, body, {header: svc.key})
            assert status not in (401, 403), (header, method, path, status, text)


async def test_platform_endpoints_and_the_presigned_put_need_no_key(svc):
    for path in OPEN:
        status, _, _ = await _call(svc, "GET", path, None, {})
        assert status == 200, path
    # The upload URL's own signature is what the PUT is checked against.
    status, grant = await svc.post("/job/file/upload", {"fileExtension": "txt"})
    assert status == 200, grant
    url = grant["presignedUrl"]
    async with aiohttp.ClientSession() as http:
        async with http.put(url, data=b"hello") as r:
            assert r.status == 200, await r.text()
        async with http.put(url.split("?")[0] + "?sig=forged", data=b"hello") as r:
            assert r.status in (400, 403) and "API key" not in await r.text()
    # The OpenAPI document says which routes need a key.
    _, doc = await svc.get("/openapi.json")
    assert doc["paths"]["/executions"]["post"]["security"]
    assert "security" not in doc["paths"]["/healthz"]["get"]
