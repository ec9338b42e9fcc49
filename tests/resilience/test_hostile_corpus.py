"""The hostile-input corpus (issue 9): every route of every service, no answer a 5xx.

Each service runs in this process (its own bootstrap, a real aiohttp server on port 0, the
in-memory log and bus) with a valid credential, so hostile input reaches the handlers rather
than stopping at authentication. For every route in the service's ``/openapi.json`` and its
router (a route without a row in ROWS fails the test), the corpus sends: nesting 10,000 levels
deep (arrays and objects) and just over the limit, invalid UTF-8 in the body, the query, the
path and a header, a YAML alias bomb, huge numbers (``1e400``, 5,000 digits), a 10 MB body over
the limit (declared and chunked), NUL bytes, empty and non-JSON bodies and wrong types for every
documented field. Every answer must be below 500, and every error a JSON ErrorBody (``error``
and ``message``; a definition's ``problems`` list counts as the message) naming the problem;
afterwards a valid request still succeeds.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from inprocess import SERVICES, build, check_a_valid_request

from nexus.auth import issue_key
from nexus.runtime import Service

MAX_BODY = 256 * 1024
"""The services' body limit here; the 10 MB input is well over it."""


@dataclass(frozen=True)
class Row:
    """How the corpus addresses one route."""

    params: dict[str, str] = field(default_factory=dict)
    """Valid-looking path parameters (each is also replaced by hostile values in turn)."""
    stream: bool = False
    """The route answers a stream (SSE or WebSocket): read the status and headers only."""


# One row per route of every service. A new route fails the test until it is added here.
ROWS: dict[tuple[str, str, str], Row] = {
    **{
        (service, "GET", path): Row()
        for service in ("kam", "workflow", "granulator", "studio")
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json")
    },
    ("kam", "POST", "/v1/login"): Row(),
    ("kam", "GET", "/v1/whoami"): Row(),
    **{
        ("kam", method, prefix + path): row
        for prefix in ("/api", "/api/kam")
        for (method, path), row in {
            ("POST", "/auth/login"): Row(),
            ("POST", "/auth/logout"): Row(),
            ("PUT", "/auth/password"): Row(),
            ("GET", "/auth/session"): Row(),
            ("GET", "/clients"): Row(),
            ("POST", "/clients"): Row(),
            ("GET", "/clients/{client_id}"): Row({"client_id": "acme"}),
            ("GET", "/clients/{client_id}/users"): Row({"client_id": "acme"}),
            ("POST", "/clients/{client_id}/users"): Row({"client_id": "acme"}),
            ("GET", "/clients/{client_id}/keys"): Row({"client_id": "acme"}),
            ("POST", "/clients/{client_id}/keys"): Row({"client_id": "acme"}),
            ("DELETE", "/clients/{client_id}/keys/{key_id}"): Row({"client_id": "acme", "key_id": "0123456789abcdef"}),
            ("GET", "/clients/{client_id}/costs"): Row({"client_id": "acme"}),
            ("GET", "/audit"): Row(),
            ("POST", "/requests"): Row(),
            ("GET", "/requests"): Row(),
            ("GET", "/requests/{request_id}"): Row({"request_id": "req_0123456789abcdef01234567"}),
            ("PUT", "/requests/{request_id}"): Row({"request_id": "req_0123456789abcdef01234567"}),
            ("POST", "/requests/{request_id}/execute"): Row({"request_id": "req_0123456789abcdef01234567"}),
            ("GET", "/requests/{request_id}/deliverables"): Row({"request_id": "req_0123456789abcdef01234567"}),
            ("GET", "/deliverables/{deliverable_id}"): Row({"deliverable_id": "dlv_1"}),
            ("GET", "/templates"): Row(),
            ("POST", "/templates"): Row(),
            ("GET", "/templates/{template_id}"): Row({"template_id": "5"}),
            ("POST", "/recommend-template"): Row(),
            ("POST", "/worker-sessions/{execution_id}/complete"): Row({"execution_id": "exec_1"}),
            ("GET", "/notifications/stream"): Row(stream=True),
            ("GET", "/console/health"): Row(),
            ("GET", "/costs"): Row(),
            ("GET", "/dead-letters"): Row(),
            ("POST", "/dead-letters/redrive"): Row(),
        }.items()
    },
    # The console: its files, and the gateway (to a service nobody runs here: hostile input must
    # be answered before anything is forwarded, or by the gateway's own 404).
    ("kam", "GET", "/"): Row(),
    ("kam", "GET", "/console/{name}"): Row({"name": "app.js"}),
    **{
        ("kam", method, "/svc/{service}/{tail}"): Row({"service": "nothing", "tail": "x"})
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
    },
    ("granulator", "POST", "/api/handshake"): Row(),
    ("granulator", "POST", "/api/process"): Row(),
    ("granulator", "POST", "/api/acknowledge"): Row(),
    ("granulator", "GET", "/api/handshakes/{handshake_id}"): Row({"handshake_id": "hs_1"}),
    ("granulator", "POST", "/generate"): Row(),
    ("studio", "GET", "/v1/blobs"): Row(),
    **{
        ("studio", method, path): Row(params)
        for method, path, params in (
            ("POST", "/blobs", {}),
            ("GET", "/blobs", {}),
            ("POST", "/blobs/content", {}),
            ("POST", "/blobs/validate", {}),
            ("POST", "/blobs/metadata", {}),
            ("GET", "/blobs/{blob_id}", {"blob_id": "blob-1"}),
            ("PUT", "/blobs/{blob_id}", {"blob_id": "blob-1"}),
            ("PATCH", "/blobs/{blob_id}", {"blob_id": "blob-1"}),
            ("DELETE", "/blobs/{blob_id}", {"blob_id": "blob-1"}),
            ("GET", "/blobs/{blob_id}/versions", {"blob_id": "blob-1"}),
            ("GET", "/blobs/{blob_id}/deltas", {"blob_id": "blob-1"}),
            ("GET", "/blobs/{blob_id}/lineage", {"blob_id": "blob-1"}),
            ("GET", "/blobs/{blob_id}/content", {"blob_id": "blob-1"}),
            ("PUT", "/blobs/{blob_id}/content", {"blob_id": "blob-1"}),
            ("POST", "/providers", {}),
            ("GET", "/providers", {}),
            ("DELETE", "/providers/{provider_id}", {"provider_id": "p-1"}),
            ("GET", "/providers/{provider_id}/triggered", {"provider_id": "p-1"}),
            ("POST", "/providers/trigger", {}),
            ("POST", "/providers/rollback", {}),
            ("POST", "/deltas/generate", {}),
            ("POST", "/consistency/check", {}),
        )
    },
    ("workflow", "POST", "/workflows"): Row(),
    ("workflow", "GET", "/workflows"): Row(),
    ("workflow", "GET", "/workflows/{workflow_id}"): Row({"workflow_id": "noop"}),
    ("workflow", "POST", "/schemas"): Row(),
    ("workflow", "GET", "/schemas"): Row(),
    ("workflow", "GET", "/schemas/{schema_id}"): Row({"schema_id": "s"}),
    ("workflow", "POST", "/executions"): Row(),
    ("workflow", "GET", "/executions"): Row(),
    ("workflow", "GET", "/executions/{execution_id}"): Row({"execution_id": "e"}),
    ("workflow", "POST", "/executions/{execution_id}/cancel"): Row({"execution_id": "e"}),
    ("workflow", "GET", "/executions/{execution_id}/events"): Row({"execution_id": "e"}),
    ("workflow", "POST", "/api/pipelines/execute"): Row(),
    ("workflow", "GET", "/api/pipelines/{execution_id}/checkpoint"): Row({"execution_id": "e"}),
    ("workflow", "GET", "/executions/{execution_id}/stream"): Row({"execution_id": "e"}, stream=True),
    ("workflow", "GET", "/queue/stats"): Row(),
    ("workflow", "GET", "/workflow/{workflowId}"): Row({"workflowId": "noop"}),
    ("workflow", "POST", "/job/initiate"): Row(),
    ("workflow", "POST", "/job/file/upload"): Row(),
    ("workflow", "PUT", "/job/file/upload/{name}"): Row({"name": "f.txt"}),
    ("workflow", "GET", "/job/file/{name}"): Row({"name": "f.txt"}),
    ("workflow", "POST", "/job/execute"): Row(),
    ("workflow", "GET", "/job/{id}/status"): Row({"id": "j"}),
    ("workflow", "GET", "/jobs"): Row(),
    ("workflow", "GET", "/job/{id}/results"): Row({"id": "j"}),
    ("workflow", "GET", "/job/{id}/audit"): Row({"id": "j"}),
    ("workflow", "GET", "/job/{id}/monitor"): Row({"id": "j"}, stream=True),
    ("workflow", "GET", "/api/opus/job/{id}/monitor"): Row({"id": "j"}, stream=True),
    ("workflow", "POST", "/job/{id}/monitor/token"): Row({"id": "j"}),
    ("workflow", "POST", "/stream-tokens"): Row(),
    ("workflow", "POST", "/anomalies"): Row(),
    ("workflow", "POST", "/job/batch"): Row(),
    ("workflow", "POST", "/triggers"): Row(),
    ("workflow", "GET", "/triggers"): Row(),
    ("workflow", "DELETE", "/triggers/{id}"): Row({"id": "t"}),
    ("workflow", "POST", "/api/v1/workflow/phase/{n}"): Row({"n": "1"}),
    ("workflow", "GET", "/api/v1/workflow/phases/{user_id}/audit"): Row({"user_id": "u"}),
    ("workflow", "GET", "/users/{user_id}/updates"): Row({"user_id": "u"}, stream=True),
    ("workflow", "GET", "/users/{user_id}/ws"): Row({"user_id": "u"}, stream=True),
    ("workflow", "POST", "/api/v1/users/{user_id}/claims/{claim_id}/confirm"): Row({"user_id": "u", "claim_id": "c"}),
    ("workflow", "GET", "/api/v1/users/{user_id}/claims"): Row({"user_id": "u"}),
    ("workflow", "GET", "/api/v1/users/{user_id}/ledger"): Row({"user_id": "u"}),
    ("workflow", "GET", "/api/v1/users/{user_id}/claims/{claim_id}/proof"): Row({"user_id": "u", "claim_id": "c"}),
    ("workflow", "GET", "/api/v1/workflow/stats"): Row(),
}

# "Billion laughs" (444 bytes of YAML that PyYAML's safe_load expands to gigabytes).
ALIAS_BOMB = (
    "id: bomb\nsteps: *i\n"
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    + "description: billion laughs, written out nowhere, refused before it is built\n"
).encode()
HUGE_DIGITS = "9" * 5000
DEEP = 10_000

# Bodies every route with a body gets: (name, bytes, content type).
BODIES: list[tuple[str, bytes, str]] = [
    ("deep arrays", b"[" * DEEP + b"]" * DEEP, "application/json"),
    ("deep objects", b'{"a":' * DEEP + b"1" + b"}" * DEEP, "application/json"),
    ("just over the depth limit", b'{"a":' * 70 + b"1" + b"}" * 70, "application/json"),
    ("deep under a field", b'{"input": ' + b"[" * DEEP + b"]" * DEEP + b"}", "application/json"),
    ("invalid UTF-8 in a string", b'{"id": "\xff\xfe", "name": "\xc3\x28"}', "application/json"),
    ("invalid UTF-8 outside JSON", b"\xff\xfe\xfd", "application/json"),
    ("alias bomb", ALIAS_BOMB, "application/yaml"),
    ("1e400", b'{"n": 1e400, "priority": 1e400}', "application/json"),
    ("5000 digits", b'{"n": ' + HUGE_DIGITS.encode() + b"}", "application/json"),
    ("NUL escaped", b'{"id": "a\\u0000b", "workflow_id": "\\u0000"}', "application/json"),
    ("NUL raw", b'{"id": "a\x00b"}', "application/json"),
    ("NUL YAML", b"id: a\x00b\nsteps: []\n", "application/yaml"),
    ("empty", b"", "application/json"),
    ("not JSON", b"{,}", "application/json"),
    ("array", b"[]", "application/json"),
    ("string", b'"text"', "application/json"),
    ("number", b"7", "application/json"),
    ("null", b"null", "application/json"),
    ("form", b"a=1&b=%ff", "application/x-www-form-urlencoded"),
    # Definitions whose expressions are the bomb: a path of 50,000 segments, a catastrophic
    # regular expression, a number the JSONPath parser cannot convert.
    *(
        (
            f"hostile {what} condition",
            json.dumps(
                {
                    "id": "w",
                    "event_type": "x.y",
                    "workflow_id": "w",
                    "condition": condition,
                    "steps": [{"id": "a", "service": "studio", "endpoint": "/e", "condition": condition}],
                }
            ).encode(),
            "application/json",
        )
        for what, condition in (
            ("long path", "$" + ".a" * 50_000),
            ("regex", "$.input[?search(@, '(a+)+$b')]"),
            ("backreference", "$.input[?match(@, '(a)\\1')]"),
            ("huge number", "$.input[?@ == " + "9" * 900 + "]"),
        )
    ),
]
PATH_VALUES = ["%00", "%FF%FE", "..%2F..%2Fetc%2Fpasswd", "x" * 2000, "%C3%28"]
QUERY_VALUES = ["%FF", "%00", "-1", "1e400", HUGE_DIGITS[:200], "%C3%28"]


def _wrong(schema: dict[str, Any]) -> Any:
    """A value of another type than ``schema`` says."""
    kind = schema.get("type")
    if kind == "string":
        return 12345
    if kind in ("integer", "number"):
        return "not a number"
    if kind == "boolean":
        return "yes"
    if kind == "array":
        return {"not": "an array"}
    return ["not", "an", "object"]


def _wrong_bodies(operation: dict[str, Any], components: dict[str, Any]) -> Iterator[tuple[str, bytes, str]]:
    """For a documented JSON body: each field in turn with a wrong type, then all of them at once."""
    content = operation.get("requestBody", {}).get("content", {})
    schema = (content.get("application/json") or {}).get("schema") or {}
    if "$ref" in schema:
        schema = components.get("schemas", {}).get(schema["$ref"].rsplit("/", 1)[-1], {})
    properties: dict[str, Any] = schema.get("properties") or {}
    for name, prop in properties.items():
        yield f"wrong type for {name}", json.dumps({name: _wrong(prop)}).encode(), "application/json"
    if properties:
        every = {name: _wrong(prop) for name, prop in properties.items()}
        yield "every field wrong", json.dumps(every).encode(), "application/json"


@dataclass
class Case:
    """A running service, its credential and a valid request that must still succeed."""

    name: str
    service: Service
    headers: dict[str, str] = field(default_factory=dict)
    valid: Callable[[aiohttp.ClientSession, Case], Awaitable[None]] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"


ENV = {
    "kam": {},
    "workflow": {"NEXUS_WORKFLOW_BUNDLED": "none"},
    "granulator": {"NEXUS_GRANULATOR_REPLICA_ID": "r"},
    "studio": {},
}


async def _valid(http: aiohttp.ClientSession, case: Case) -> None:
    await check_a_valid_request(case.name, http, case.url, case.headers)


@pytest.fixture(params=SERVICES)
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Case]:
    service = await build(request.param, tmp_path, NEXUS_MAX_BODY_BYTES=str(MAX_BODY), **ENV[request.param])
    built = Case(request.param, service, valid=_valid)
    await built.service.start()
    if built.name == "granulator":
        token = (await issue_key(built.service.log, "worker", "orchestrator")).secret
        built.headers = {"Authorization": f"Bearer {token}", "X-Worker-ID": "orchestrator"}
    else:
        # An admin key at KAM, so hostile bodies reach the admin routes' handlers too.
        scopes = ("admin",) if built.name == "kam" else ()
        key = (await issue_key(built.service.log, "client", "hostile", scopes=scopes)).secret
        built.headers = {"X-API-Key": key}
    try:
        yield built
    finally:
        await built.service.stop()


@dataclass
class Tally:
    """What the corpus sent, and every answer that broke the rules."""

    sent: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)


async def _check(resp: aiohttp.ClientResponse, what: str, tally: Tally, *, stream: bool) -> None:
    tally.sent += 1
    if resp.status >= 500:
        tally.fail(f"{what}: {resp.status} {(await resp.text())[:300]}")
        return
    if resp.status < 400 or resp.status == 101:
        return
    if stream and resp.content_type == "text/event-stream":
        return
    if resp.content_type != "application/json":
        tally.fail(f"{what}: {resp.status} with {resp.content_type}, not a JSON error")
        return
    body = await resp.json()
    if not _names_the_problem(body):
        tally.fail(f"{what}: {resp.status} body is not an ErrorBody naming the problem: {body}")


def _names_the_problem(body: Any) -> bool:
    """An ErrorBody (``error`` and ``message``), a definition's ``problems``, or seed 000's job API
    error (``{"success": false, "error": "<what is wrong>"}``, its documented contract)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        return False
    message, problems = body.get("message"), body.get("problems")
    if isinstance(message, str) and message:
        return True
    if isinstance(problems, list) and problems:
        return True
    return body.get("success") is False


async def _send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    tally: Tally,
    what: str,
    *,
    stream: bool,
    headers: dict[str, str],
    data: Any = None,
    prefix: str = "",
) -> None:
    if prefix:
        what = f"{prefix} [{what}]"
    try:
        async with http.request(
            method, url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=20)
        ) as resp:
            await _check(resp, what, tally, stream=stream)
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        # The server may answer 413 and close before a 10 MB upload is written out.
        if "10 MB" not in what:
            tally.fail(f"{what}: connection failed: {exc!r}")
        tally.sent += 1


async def _raw_request(case: Case, method: str, path: str, extra_headers: list[bytes], tally: Tally, what: str) -> None:
    """A request written by hand, for bytes aiohttp's client will not put in a header."""
    reader, writer = await asyncio.open_connection("127.0.0.1", case.service.port)
    try:
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", b"Content-Length: 2"]
        lines += [f"{k}: {v}".encode() for k, v in case.headers.items()] + extra_headers
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n{}")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    tally.sent += 1
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status >= 500:
        tally.fail(f"{what}: {status} {body[:300]!r}")
    elif status >= 400 and b"application/json" in head.lower():
        parsed = json.loads(body)
        if not _names_the_problem(parsed):
            tally.fail(f"{what}: {status} body is not an ErrorBody: {parsed}")
    elif status >= 400 and b"Invalid header value char" not in body:
        # Only aiohttp's own parser (a control character in a header) answers in plain text.
        tally.fail(f"{what}: {status} without a JSON error: {body[:200]!r}")


def _routes(case: Case, document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (method, path) the OpenAPI document or the router knows, with its operation."""
    routes: dict[tuple[str, str], dict[str, Any]] = {}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                routes[(method.upper(), path)] = operation
    for route in case.service.app.router.routes():
        resource = route.resource
        if route.method in ("HEAD", "OPTIONS", "*") or resource is None:
            continue
        routes.setdefault((route.method, resource.canonical), {})
    return routes


def _fill(path: str, params: dict[str, str]) -> str:
    for name, value in params.items():
        path = path.replace("{" + name + "}", value)
    return path


async def test_hostile_inputs_never_get_a_5xx_and_the_service_goes_on(case: Case) -> None:
    tally = Tally()
    async with aiohttp.ClientSession() as http:
        async with http.get(case.url + "/openapi.json") as resp:
            assert resp.status == 200
            document = await resp.json()
        routes = _routes(case, document)
        missing = sorted(f"{m} {p}" for m, p in routes if (case.name, m, p) not in ROWS)
        assert not missing, f"routes of {case.name} without a row in the hostile corpus: {missing}"
        components = document.get("components", {})

        for (method, template), operation in sorted(routes.items()):
            row = ROWS[(case.name, method, template)]
            path = _fill(template, row.params)
            url = case.url + path
            label = f"{case.name} {method} {template}"
            send = functools.partial(_send, http, method, url, tally, prefix=label, stream=row.stream)

            # Bodies (every route gets them: a route that takes none must still not fail on one).
            for name, body, content_type in [*BODIES, *_wrong_bodies(operation, components)]:
                await send(name, data=body, headers={**case.headers, "Content-Type": content_type})

            # A 10 MB body over the limit, declared and chunked.
            big = b'{"x": "' + b"a" * (10 * 1024 * 1024) + b'"}'
            await send(
                "10 MB declared", data=io.BytesIO(big), headers={**case.headers, "Content-Type": "application/json"}
            )

            async def chunks(payload: bytes = big) -> AsyncIterator[bytes]:
                for start in range(0, len(payload), 1024 * 1024):
                    yield payload[start : start + 1024 * 1024]

            await send("10 MB chunked", data=chunks(), headers={**case.headers, "Content-Type": "application/json"})

            # Hostile path parameters, one at a time.
            for param in row.params:
                for value in PATH_VALUES:
                    hostile = _fill(template, {**row.params, param: value})
                    await _send(
                        http,
                        method,
                        case.url + hostile,
                        tally,
                        f"{label} [path {param}={value[:20]}]",
                        stream=row.stream,
                        headers={**case.headers, "Content-Type": "application/json"},
                        data=b"{}",
                    )

            # Hostile query parameters: the documented ones, and one nobody expects.
            names = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"] + ["zz"]
            for name in names:
                for value in QUERY_VALUES:
                    await _send(
                        http,
                        method,
                        f"{url}?{quote(name)}={value}",
                        tally,
                        f"{label} [query {name}={value[:20]}]",
                        stream=row.stream,
                        headers={**case.headers, "Content-Type": "application/json"},
                        data=b"{}",
                    )

            # Headers aiohttp's client refuses to write: invalid UTF-8 and a control character.
            if not row.stream:
                await _raw_request(case, method, path, [b"X-Hostile: \xff\xfe"], tally, f"{label} [header \\xff]")
                await _raw_request(case, method, path, [b"X-Hostile: a\x01b"], tally, f"{label} [header \\x01]")
                await _raw_request(
                    case, method, path, [b"Content-Type: application/\xffjson"], tally, f"{label} [content-type \\xff]"
                )

        print(f"hostile corpus: {tally.sent} requests to {len(routes)} routes of {case.name}")
        assert not tally.failures, f"{len(tally.failures)} of {tally.sent} answers broke the rules:\n" + "\n".join(
            tally.failures[:60]
        )

        # After all of that the service still serves valid requests.
        assert case.valid is not None
        await case.valid(http, case)
        async with http.get(case.url + "/readyz") as resp:
            assert resp.status == 200, await resp.text()


async def test_an_event_the_log_refuses_as_too_large_is_a_413(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A definition under the body limit whose event is over the log's limit.
    monkeypatch.setenv("NEXUS_MAX_EVENT_BYTES", str(64 * 1024))
    built = Case("workflow", await build("workflow", tmp_path, NEXUS_MAX_BODY_BYTES=str(MAX_BODY), **ENV["workflow"]))
    await built.service.start()
    try:
        key = (await issue_key(built.service.log, "client", "hostile")).secret
        definition = {
            "id": "big",
            "description": "x" * (128 * 1024),
            "steps": [{"id": "w", "type": "wait_event", "event": "x.y", "timeout_seconds": 60}],
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(built.url + "/workflows", json=definition, headers={"X-API-Key": key}) as resp:
                body = await resp.json()
                assert resp.status == 413, body
                assert body["error"] == "event_too_large" and "NEXUS_MAX_EVENT_BYTES" in body["message"], body
            async with http.get(built.url + "/workflows/big", headers={"X-API-Key": key}) as resp:
                assert resp.status == 404, await resp.text()
    finally:
        await built.service.stop()


async def _raw_answer(port: int, header: bytes) -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + header + b"\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


async def test_headers_that_are_not_utf8_or_hold_control_characters_are_refused(tmp_path: Path) -> None:
    built = Case("studio", await build("studio", tmp_path, NEXUS_MAX_BODY_BYTES=str(MAX_BODY)))
    await built.service.start()
    try:
        # aiohttp hands bytes that are not UTF-8 over as surrogates: Nexus refuses them, naming the header.
        status, _head, body = await _raw_answer(built.service.port or 0, b"X-Hostile: caf\xe9")
        answer = json.loads(body)
        assert status == 400 and answer["error"] == "bad_header", answer
        assert "X-Hostile" in answer["message"] and "UTF-8" in answer["message"], answer
        # A control character never reaches Nexus: aiohttp's own parser answers 400 (in plain text).
        status, _head, body = await _raw_answer(built.service.port or 0, b"X-Hostile: a\x00b")
        assert status == 400 and b"Invalid header value char" in body, body
        # Valid UTF-8 beyond ASCII is fine.
        status, _head, body = await _raw_answer(built.service.port or 0, "X-Hostile: café".encode())
        assert status == 200, body
    finally:
        await built.service.stop()
