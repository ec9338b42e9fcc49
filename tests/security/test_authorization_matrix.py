"""The authorization matrix, generated from every service's OpenAPI document.

All four services run in one process on a shared log and bus (each built by its own bootstrap,
served on a real aiohttp server on port 0). Client ``alpha`` creates one resource of every kind;
then every route of every service's ``/openapi.json`` is called with

- no credential, a garbage one, a revoked one: 401;
- a credential of the wrong kind (a worker token on a client route, a client key on a worker
  route): 403;
- client ``beta``'s key on alpha's resource: 404, exactly as for a resource that does not exist,
  and nothing of alpha's in the answer; alpha's own key on it: not refused;
- an admin key on alpha's resource: served, and the access recorded in stream ``audit-admin``.

Every route must have a row in ``ROWS`` (how to call it: path parameters and a body): a route
added without one fails ``test_every_route_has_a_row``, so the matrix cannot fall behind the API.
Public routes are listed in ``PUBLIC`` with the reason they need no credential. KAM's ``/api``
routes, which take login sessions as well as keys, have their own matrix with the credentials
only they know (expired and logged-out sessions, scoped keys): ``test_kam_isolation``, whose
rows this test requires.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from inprocess import build, memory_bus
from test_kam_isolation import PUBLIC as KAM_PUBLIC
from test_kam_isolation import kam_row

from nexus.auth import issue_key, revoke_key
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw.memory import MemoryRaw
from nexus.runtime import AUDIT_STREAM, Service

ALPHA, BETA = "alpha", "beta"

PUBLIC = {
    ("*", "GET", "/healthz"): "liveness probe",
    ("*", "GET", "/readyz"): "readiness probe",
    ("*", "GET", "/metrics"): "Prometheus scrape (no tenant data)",
    ("*", "GET", "/openapi.json"): "the API's own description",
    ("kam", "POST", "/v1/login"): "checks a password: the credential is the body",
    ("workflow", "PUT", "/job/file/upload/{name}"): "presigned URL: its HMAC signature is the credential",
    ("workflow", "GET", "/job/file/{name}"): "signed file URL: its HMAC signature is the credential",
    ("kam", "GET", "/"): "the console's page (no data: everything it shows comes from guarded calls)",
    ("kam", "GET", "/console/{name}"): "the console's modules and style sheet (no data)",
    **{
        ("kam", method, "/svc/{service}/{tail}"): (
            "the console's gateway: forwards to the workflow service or the studio, which check the "
            "credential and the owner as for a direct call (tests/kam/test_kam_gateway.py)"
        )
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
    },
}


@dataclass
class Row:
    """How to call one route on alpha's resources.

    Attributes:
        params: Path parameter → a key of ``Resources.ids`` (or a literal, prefixed ``=``).
        body: The JSON body (a function of the resources' ids), or None.
        cross: What beta gets when the route names alpha's resource through its body or a
            path parameter that the decorator does not check (None: not applicable). Routes
            marked ``x-nexus-owned`` in OpenAPI always expect 404 for beta.
        hides: For listings: a function of the answer's JSON that returns every id listed, so
            the test can check that none of alpha's is in beta's answer.
    """

    params: dict[str, str] = field(default_factory=dict)
    body: Callable[[dict[str, str]], Any] | None = None
    cross: int | None = None
    hides: Callable[[Any], set[str]] | None = None
    served: frozenset[int] = frozenset()
    """Statuses that also mean the owner or an admin got through (the route's own refusal of a
    body that is valid for the matrix, e.g. a write without its If-Match precondition)."""


PIPELINE = {
    "template": {
        "name": "matrix_pipeline",
        "stages": [{"name": "outline", "worker": "granulator", "input": {"topic": "Tea", "structure_type": "article"}}],
    },
    "context": {"request_id": 1},
}
"""A one-stage pipeline (seed 002's body) on the platform's granulator."""


def _ids(key: str, field_name: str = "id") -> Callable[[Any], set[str]]:
    """The ids in a listing: ``body[key]`` (or the body itself when it is a list)."""
    return lambda body: {str(item.get(field_name)) for item in (body if isinstance(body, list) else body[key])}


ROWS: dict[tuple[str, str, str], Row] = {
    ("kam", "GET", "/v1/whoami"): Row(),
    ("studio", "GET", "/v1/blobs"): Row(hides=lambda body: set(body.get("keys", []))),
    # -- studio: blobs, versions, deltas
    ("studio", "POST", "/blobs"): Row(body=lambda ids: {"content": {"beta": 1}, "content_type": "application/json"}),
    ("studio", "GET", "/blobs"): Row(hides=_ids("blobs")),
    ("studio", "POST", "/blobs/content"): Row(body=lambda ids: {"raw": "beta's"}),
    ("studio", "GET", "/blobs/{blob_id}"): Row(params={"blob_id": "blob"}),
    ("studio", "PUT", "/blobs/{blob_id}"): Row(
        params={"blob_id": "json_blob"}, body=lambda ids: {"content": {"taken": True}, "expected_version": 1}
    ),
    ("studio", "PATCH", "/blobs/{blob_id}"): Row(
        params={"blob_id": "json_blob"},
        body=lambda ids: [{"op": "add", "path": "/taken", "value": True}],
        served=frozenset({428}),
    ),
    ("studio", "DELETE", "/blobs/{blob_id}"): Row(params={"blob_id": "doomed_blob"}, served=frozenset({410})),
    ("studio", "GET", "/blobs/{blob_id}/versions"): Row(params={"blob_id": "blob"}),
    ("studio", "GET", "/blobs/{blob_id}/deltas"): Row(params={"blob_id": "blob"}),
    ("studio", "GET", "/blobs/{blob_id}/lineage"): Row(params={"blob_id": "blob"}),
    ("studio", "GET", "/blobs/{blob_id}/content"): Row(params={"blob_id": "blob"}),
    ("studio", "PUT", "/blobs/{blob_id}/content"): Row(
        params={"blob_id": "blob"}, body=lambda ids: {"raw": 1}, served=frozenset({428})
    ),
    ("studio", "POST", "/blobs/validate"): Row(
        body=lambda ids: {"blob_id": ids["blob"], "schema_id": "blob_input_schema_v1"}, cross=404
    ),
    ("studio", "POST", "/blobs/metadata"): Row(
        body=lambda ids: {"blob_id": ids["blob"], "extract_fields": ["size"]}, cross=404
    ),
    # -- studio: providers, their runs, the seed's routes
    ("studio", "POST", "/providers"): Row(
        body=lambda ids: {
            "provider": {"id": "beta-provider", "name": "Beta", "type": "processor"},
            "workflows": [{"workflow_id": "text_expansion", "triggers": [{"event": "onCreate"}]}],
        }
    ),
    ("studio", "GET", "/providers"): Row(
        hides=lambda body: {
            str(p.get("id") or p.get("provider_id") or (p.get("provider") or {}).get("id"))
            for p in body.get("providers", [])
            if p.get("owner") != "platform"
        }
    ),
    ("studio", "DELETE", "/providers/{provider_id}"): Row(params={"provider_id": "provider"}, cross=404),
    ("studio", "GET", "/providers/{provider_id}/triggered"): Row(params={"provider_id": "provider"}, cross=404),
    ("studio", "POST", "/providers/trigger"): Row(
        body=lambda ids: {"blob_id": ids["blob"], "provider_ids": [ids["provider"]]}, cross=404
    ),
    ("studio", "POST", "/providers/rollback"): Row(
        body=lambda ids: {"blob_id": ids["blob"], "execution_id": "exec-none"}, cross=404
    ),
    ("studio", "POST", "/deltas/generate"): Row(body=lambda ids: {"blob_id": ids["blob"]}, cross=404),
    ("studio", "POST", "/consistency/check"): Row(
        body=lambda ids: {"book_id": "alpha-book", "chapter_content": "Anna walked home.", "chapter_number": 2},
        hides=lambda body: set(body.get("compared_chapters", [])),
    ),
    # -- workflow: definitions and executions
    ("workflow", "POST", "/workflows"): Row(
        body=lambda ids: {"id": "beta_own", "steps": [{"id": "w", "type": "wait_event", "event": "x.y"}]}
    ),
    ("workflow", "GET", "/workflows"): Row(hides=_ids("workflows")),
    ("workflow", "GET", "/workflows/{workflow_id}"): Row(params={"workflow_id": "workflow"}, cross=404),
    ("workflow", "POST", "/schemas"): Row(body=lambda ids: {"id": "beta_schema", "definition": {"type": "object"}}),
    ("workflow", "GET", "/schemas"): Row(hides=_ids("schemas")),
    ("workflow", "GET", "/schemas/{schema_id}"): Row(params={"schema_id": "schema"}, cross=404),
    ("workflow", "POST", "/executions"): Row(body=lambda ids: {"workflow_id": ids["workflow"], "input": {}}, cross=404),
    ("workflow", "GET", "/executions"): Row(hides=_ids("executions")),
    ("workflow", "GET", "/executions/{execution_id}"): Row(params={"execution_id": "execution"}),
    ("workflow", "GET", "/executions/{execution_id}/events"): Row(params={"execution_id": "execution"}),
    ("workflow", "GET", "/executions/{execution_id}/stream"): Row(params={"execution_id": "execution"}),
    ("workflow", "POST", "/executions/{execution_id}/cancel"): Row(params={"execution_id": "execution"}),
    ("workflow", "GET", "/queue/stats"): Row(hides=lambda body: set(body.get("next", []))),
    # -- workflow: the job API of seed 000
    ("workflow", "GET", "/workflow/{workflowId}"): Row(params={"workflowId": "workflow"}, cross=404),
    ("workflow", "POST", "/job/initiate"): Row(body=lambda ids: {"workflowId": ids["workflow"]}, cross=404),
    ("workflow", "POST", "/job/execute"): Row(
        body=lambda ids: {"jobExecutionId": ids["job"], "jobPayloadSchemaInstance": {}}, cross=404
    ),
    ("workflow", "POST", "/job/batch"): Row(
        body=lambda ids: {"workflowId": ids["workflow"], "jobs": [{"jobPayloadSchemaInstance": {}}]}, cross=404
    ),
    ("workflow", "GET", "/jobs"): Row(hides=_ids("jobs", "jobExecutionId")),
    ("workflow", "GET", "/job/{id}/status"): Row(params={"id": "job"}),
    ("workflow", "GET", "/job/{id}/results"): Row(params={"id": "job"}),
    ("workflow", "GET", "/job/{id}/audit"): Row(params={"id": "job"}),
    ("workflow", "GET", "/job/{id}/monitor"): Row(params={"id": "job"}),
    ("workflow", "GET", "/api/opus/job/{id}/monitor"): Row(params={"id": "job"}),
    ("workflow", "POST", "/job/{id}/monitor/token"): Row(params={"id": "job"}),
    # A stream token adds no right: the stream's own owner check applies when it is opened.
    ("workflow", "POST", "/stream-tokens"): Row(body=lambda ids: {"path": f"/job/{ids['job']}/monitor"}),
    ("workflow", "POST", "/anomalies"): Row(
        body=lambda ids: {"anomaly": {"title": "beta's"}, "workflowId": ids["workflow"]}, cross=404
    ),
    ("workflow", "POST", "/job/file/upload"): Row(
        body=lambda ids: {"fileExtension": "pdf", "jobExecutionId": ids["job"]}, cross=404
    ),
    # -- workflow: triggers
    ("workflow", "POST", "/triggers"): Row(
        body=lambda ids: {"id": "beta-trigger", "event_type": "x.y", "workflow_id": ids["workflow"]}, cross=400
    ),
    ("workflow", "GET", "/triggers"): Row(hides=_ids("triggers")),
    ("workflow", "DELETE", "/triggers/{id}"): Row(params={"id": "trigger"}, cross=404),
    # -- workflow: the seven phases and live updates of seed 001
    ("workflow", "POST", "/api/v1/workflow/phase/{n}"): Row(
        params={"n": "=1"}, body=lambda ids: {"user_id": ids["user"]}
    ),
    ("workflow", "GET", "/api/v1/workflow/phases/{user_id}/audit"): Row(params={"user_id": "user"}, cross=404),
    ("workflow", "GET", "/users/{user_id}/updates"): Row(params={"user_id": "user"}, cross=404),
    ("workflow", "GET", "/users/{user_id}/ws"): Row(params={"user_id": "user"}, cross=404),
    ("workflow", "POST", "/api/v1/users/{user_id}/claims/{claim_id}/confirm"): Row(
        params={"user_id": "user", "claim_id": "claim"}, cross=404
    ),
    ("workflow", "GET", "/api/v1/users/{user_id}/claims"): Row(params={"user_id": "user"}, cross=404),
    ("workflow", "GET", "/api/v1/users/{user_id}/ledger"): Row(params={"user_id": "user"}, cross=404),
    ("workflow", "GET", "/api/v1/users/{user_id}/claims/{claim_id}/proof"): Row(
        params={"user_id": "user", "claim_id": "claim"}, cross=404
    ),
    ("workflow", "GET", "/api/v1/workflow/stats"): Row(),
    # -- workflow: seed 002's orchestrator contract
    ("workflow", "POST", "/api/pipelines/execute"): Row(body=lambda ids: PIPELINE),
    ("workflow", "GET", "/api/pipelines/{execution_id}/checkpoint"): Row(params={"execution_id": "pipeline"}),
    # -- granulator
    ("granulator", "POST", "/api/handshake"): Row(body=lambda ids: dict(HANDSHAKE)),
    ("granulator", "POST", "/api/process"): Row(
        body=lambda ids: {"handshake_id": ids["handshake"], "execution_id": HANDSHAKE["execution_id"]}, cross=404
    ),
    ("granulator", "POST", "/api/acknowledge"): Row(
        body=lambda ids: {"handshake_id": ids["handshake"], "execution_id": HANDSHAKE["execution_id"]},
        cross=404,
    ),
    ("granulator", "GET", "/api/handshakes/{handshake_id}"): Row(params={"handshake_id": "handshake"}),
    ("granulator", "POST", "/generate"): Row(body=lambda ids: {"title": "Tea", "text": "Tea is a drink."}),
}

HANDSHAKE = {
    "stage": "content_granulation",
    "execution_id": "exec_matrix",
    "input": {"topic": "Tea", "structure_type": "research_report"},
    "requirements": {"memory_mb": 128, "timeout_ms": 60000},
}


@dataclass
class Platform:
    services: dict[str, Service]
    log: MemoryEventLog
    credentials: dict[str, dict[str, str]]
    ids: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.services[name].port}"


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    # One platform: the four services share the log, the bus and Raw.
    log = MemoryEventLog()
    bus = await memory_bus()
    raw = MemoryRaw()
    services: dict[str, Service] = {}
    shared: dict[str, Any] = {"log": log, "bus": bus, "raw": raw}
    services["granulator"] = await build("granulator", tmp_path, **shared, NEXUS_GRANULATOR_REPLICA_ID="m")
    await services["granulator"].start()
    granulator_port = str(services["granulator"].port)
    for name in ("kam", "studio", "workflow"):
        services[name] = await build(name, tmp_path, **shared, NEXUS_GRANULATOR_PORT=granulator_port)
        await services[name].start()
    alpha = await issue_key(log, "client", ALPHA)
    beta = await issue_key(log, "client", BETA)
    admin = await issue_key(log, "client", "ops", scopes=("admin",))
    revoked = await issue_key(log, "client", ALPHA)
    await revoke_key(log, revoked.info.key_id)
    worker = await issue_key(log, "worker", "matrix-worker")
    credentials = {
        ALPHA: {"X-API-Key": alpha.secret},
        BETA: {"X-API-Key": beta.secret},
        "admin": {"X-API-Key": admin.secret},
        "revoked": {"X-API-Key": revoked.secret},
        "garbage": {"X-API-Key": "nxk_0123456789abcdef.not-a-secret"},
        "worker": {"Authorization": f"Bearer {worker.secret}", "X-Worker-ID": "matrix-worker"},
        "garbage-worker": {"Authorization": "Bearer nxw_0123456789abcdef.nope", "X-Worker-ID": "matrix-worker"},
    }
    platform = Platform(services, log, credentials)
    await _create_alphas_resources(platform)
    try:
        yield platform
    finally:
        for name in ("workflow", "studio", "kam", "granulator"):
            await services[name].stop()


async def _create_alphas_resources(platform: Platform) -> None:
    """One resource of every kind, owned by alpha, created through the API as alpha."""
    headers = platform.credentials[ALPHA]
    wf, gr = platform.url("workflow"), platform.url("granulator")
    ids = platform.ids
    async with aiohttp.ClientSession(headers=headers) as http:

        async def call(method: str, url: str, body: Any, status: int = 200) -> Any:
            async with http.request(method, url, data=json.dumps(body)) as resp:
                assert resp.status == status, (url, resp.status, await resp.text())
                return await resp.json()

        schema = await call("POST", f"{wf}/schemas", {"id": "alpha_schema", "definition": {"type": "object"}}, 201)
        ids["schema"] = schema["id"]
        definition = {
            "id": "alpha_wait",
            "input_schema_id": "alpha_schema",
            "steps": [{"id": "w", "type": "wait_event", "event": "alpha.never", "timeout_seconds": 3600}],
        }
        ids["workflow"] = (await call("POST", f"{wf}/workflows", definition, 201))["id"]
        ids["execution"] = (await call("POST", f"{wf}/executions", {"workflow_id": "alpha_wait", "input": {}}, 202))[
            "id"
        ]
        ids["job"] = (await call("POST", f"{wf}/job/initiate", {"workflowId": "alpha_wait"}))["jobExecutionId"]
        ids["pipeline"] = (await call("POST", f"{wf}/api/pipelines/execute", PIPELINE, 202))["execution_id"]
        trigger = {"id": "alpha-trigger", "event_type": "alpha.x", "workflow_id": "alpha_wait"}
        ids["trigger"] = (await call("POST", f"{wf}/triggers", trigger, 201))["id"]
        ids["user"] = "user-of-alpha"
        await call("POST", f"{wf}/api/v1/workflow/phase/1", {"user_id": ids["user"]}, 202)
        ids["claim"] = "claim-of-alpha"
        prompted = {"user_id": ids["user"], "matches": [{"claim_id": ids["claim"], "confidence": 0.6}]}
        await call("POST", f"{wf}/api/v1/workflow/phase/4", prompted, 202)
        ids["handshake"] = (await call("POST", f"{gr}/api/handshake", HANDSHAKE))["handshake_id"]
        st = platform.url("studio")
        chapter = {
            "content": "Anna met Bruno at the harbour.",
            "content_type": "text/plain",
            "metadata": {"type": "chapter", "book_id": "alpha-book", "chapter_number": 1},
        }
        ids["blob"] = (await call("POST", f"{st}/blobs", chapter, 201))["id"]
        ids["doomed_blob"] = (await call("POST", f"{st}/blobs", {"content": "to delete"}, 201))["id"]
        ids["json_blob"] = (await call("POST", f"{st}/blobs", {"content": {"n": 1}}, 201))["id"]
        provider = {
            "provider": {"id": "alpha-provider", "name": "Alpha's", "type": "processor"},
            "workflows": [
                {
                    "workflow_id": "alpha_wait",
                    "triggers": [
                        {
                            "event": "onCreate",
                            "conditions": [{"field": "metadata.type", "operator": "eq", "value": "never"}],
                        }
                    ],
                }
            ],
        }
        ids["provider"] = (await call("POST", f"{st}/providers", provider, 201))["provider"]["id"]


async def _documents(platform: Platform) -> dict[str, dict[str, Any]]:
    documents = {}
    async with aiohttp.ClientSession() as http:
        for name in platform.services:
            async with http.get(f"{platform.url(name)}/openapi.json") as resp:
                documents[name] = await resp.json()
    return documents


def _operations(documents: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [
        (service, method.upper(), path, operation)
        for service, document in sorted(documents.items())
        for path, methods in sorted(document["paths"].items())
        for method, operation in sorted(methods.items())
    ]


def _public(service: str, method: str, path: str) -> bool:
    return (service, method, path) in PUBLIC or ("*", method, path) in PUBLIC


def _path(platform: Platform, path: str, row: Row) -> str:
    for name, source in row.params.items():
        value = source[1:] if source.startswith("=") else platform.ids[source]
        path = path.replace("{" + name + "}", value)
    return path


async def _call(
    http: aiohttp.ClientSession,
    platform: Platform,
    service: str,
    method: str,
    path: str,
    headers: dict[str, str],
    row: Row | None = None,
) -> tuple[int, str]:
    row = row or ROWS[(service, method, path)]
    url = platform.url(service) + _path(platform, path, row)
    body = json.dumps(row.body(platform.ids)) if row.body is not None else None
    async with http.request(method, url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        if resp.content_type == "text/event-stream":
            # A stream that was let through: its first bytes are enough (it would run for long).
            text = (await resp.content.readany()).decode(errors="replace")
        else:
            text = await resp.text()
        return resp.status, text


async def test_every_route_has_a_row_or_is_public_for_a_reason(platform: Platform) -> None:
    documents = await _documents(platform)
    missing, public_with_auth, secured_public = [], [], []
    for service, method, path, operation in _operations(documents):
        secured = bool(operation.get("security"))
        if _public(service, method, path):
            if secured:
                public_with_auth.append((service, method, path))
            continue
        if service == "kam" and path.startswith("/api/"):
            if (method, path) in KAM_PUBLIC:
                continue
            if kam_row(path, method) is None:
                missing.append((service, method, path))  # KAM's own matrix must have it
        elif (service, method, path) not in ROWS:
            missing.append((service, method, path))
        if not secured:
            secured_public.append((service, method, path))
    assert not missing, f"routes without a row in the authorization matrix: {missing}"
    assert not secured_public, f"routes with no credential that are not listed in PUBLIC: {secured_public}"
    assert not public_with_auth, f"PUBLIC routes that do ask for a credential: {public_with_auth}"
    stale = [key for key in ROWS if not any(key == op[:3] for op in _operations(documents))]
    assert not stale, f"rows for routes that no longer exist: {stale}"


async def test_the_matrix(platform: Platform) -> None:
    documents = await _documents(platform)
    creds = platform.credentials
    failures: list[str] = []
    sent = 0
    async with aiohttp.ClientSession() as http:
        for service, method, path, operation in _operations(documents):
            if _public(service, method, path) or (service, method, path) not in ROWS:
                continue
            schemes = {name for requirement in operation["security"] for name in requirement}
            client_ok, worker_ok = "apiKey" in schemes, "workerToken" in schemes
            where = f"{service} {method} {path}"

            async def expect(
                who: str,
                statuses: set[int],
                headers: dict[str, str],
                *,
                where: str = where,
                route: tuple[str, str, str] = (service, method, path),
            ) -> str:
                nonlocal sent
                sent += 1
                status, text = await _call(http, platform, *route, headers)
                if status not in statuses:
                    failures.append(f"{where} as {who}: {status} (expected {sorted(statuses)}): {text[:200]}")
                return text

            await expect("nobody", {401}, {})
            await expect("garbage key", {401}, creds["garbage"] if client_ok else creds["garbage-worker"])
            await expect("revoked key", {401}, creds["revoked"])
            if client_ok and not worker_ok:
                worker_secret = creds["worker"]["Authorization"].removeprefix("Bearer ")
                await expect("a worker token as a key", {403}, {"X-API-Key": worker_secret})
            if worker_ok and not client_ok:
                await expect("a client key as bearer", {403}, {"Authorization": f"Bearer {creds[ALPHA]['X-API-Key']}"})
            row = ROWS[(service, method, path)]
            owned = "x-nexus-owned" in operation
            if owned or row.cross is not None:
                expected = 404 if owned else row.cross
                text = await expect("another client", {expected}, creds[BETA])  # type: ignore[arg-type]
            if owned:
                # Beta's answer on alpha's resource is the answer on a resource that does not exist.
                param = operation["x-nexus-owned"]["parameter"]
                real = platform.ids[row.params[param]]
                ghost = Row(params={**row.params, param: "=no-such-" + param}, body=row.body)
                status, missing = await _call(http, platform, service, method, path, creds[BETA], ghost)
                sent += 1
                if (status, missing.replace("no-such-" + param, real)) != (404, text):
                    failures.append(f"{where}: beta's answer differs from a missing resource's: {text} / {missing}")
            if row.hides is not None:
                status, text = await _call(http, platform, service, method, path, creds[BETA])
                sent += 1
                listed = row.hides(json.loads(text)) if status == 200 else set()
                overlap = listed & set(platform.ids.values())
                if overlap:
                    failures.append(f"{where}: beta's listing shows alpha's {sorted(overlap)}")
            if owned:
                # alpha itself is served, and so is an admin (recorded in the audit stream).
                await expect("the owner", set(range(200, 300)) | {409} | row.served, creds[ALPHA])
                await expect("an admin", set(range(200, 300)) | {409} | row.served, creds["admin"])
    assert not failures, f"{len(failures)} of {sent} requests went wrong:\n" + "\n".join(failures)
    print(f"authorization matrix: {sent} requests over {len(ROWS)} routes of 4 services")
    audited = await platform.log.read_stream(AUDIT_STREAM)
    assert audited and {e.data["tenant"] for e in audited} == {ALPHA}
