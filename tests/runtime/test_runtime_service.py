"""The runtime in process: routes with OpenAPI, JSON errors, metrics by route template, tracing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from nexus.bus import Delivery, open_bus
from nexus.config import PlatformSettings
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import cmd_subject
from nexus.runtime import HTTPError, Service, ServiceSettings, json_response, read_json

pytestmark = pytest.mark.nats


class NewThing(msgspec.Struct, frozen=True):
    """A thing to create."""

    name: str
    size: int


class Thing(msgspec.Struct, frozen=True):
    id: str
    name: str


@pytest.fixture
async def service(nats_server: str, tmp_path: Path) -> AsyncIterator[tuple[Service, InMemorySpanExporter]]:
    env = {"NEXUS_NATS_URL": nats_server, "NEXUS_DATA_DIR": str(tmp_path), "NEXUS_MAX_BODY_BYTES": "2048"}
    settings = ServiceSettings.from_env("things", env)
    settings = ServiceSettings(**{**settings.__dict__, "port": 0})
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bus = await open_bus(PlatformSettings.from_env(env), name="test")
    svc = Service(settings, log=MemoryEventLog(), bus=bus, tracer_provider=provider)

    @svc.route("POST", "/v1/things", summary="Create a thing", request=NewThing, response=Thing, status=201)
    async def create(request: web.Request) -> web.Response:
        body = await read_json(request, NewThing)
        return json_response(Thing(id="t1", name=body.name), status=201)

    @svc.route("GET", "/v1/things/{id}", summary="One thing", response=Thing, responses={404: "No such thing"})
    async def get(request: web.Request) -> web.Response:
        if request.match_info["id"] != "t1":
            raise HTTPError(404, f"no thing {request.match_info['id']}")
        return json_response(Thing(id="t1", name="one"))

    @svc.route("GET", "/v1/boom", summary="Fails")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("database password is hunter2")

    received: list[bytes] = []

    @svc.command("echo")
    async def echo(delivery: Delivery) -> bytes:
        received.append(delivery.data)
        return b"echo:" + delivery.data

    await svc.start()
    try:
        yield svc, exporter
    finally:
        await svc.stop()


async def test_routes_errors_metrics_openapi_and_commands(service: tuple[Service, InMemorySpanExporter]) -> None:
    svc, _ = service
    base = f"http://127.0.0.1:{svc.port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/things", json={"name": "a", "size": 1}) as r:
            assert r.status == 201 and (await r.json()) == {"id": "t1", "name": "a"}
        # Bad JSON and a schema mismatch: 400 naming the problem.
        async with http.post(f"{base}/v1/things", data=b"{nope", headers={"Content-Type": "application/json"}) as r:
            body = await r.json()
            assert r.status == 400 and body["error"] == "bad_json" and "not valid JSON" in body["message"]
        async with http.post(f"{base}/v1/things", json={"name": "a", "size": "big"}) as r:
            body = await r.json()
            assert r.status == 400 and "$.size" in body["message"]
        async with http.post(f"{base}/v1/things", data=b"x" * 4096) as r:
            assert r.status == 413 and (await r.json())["error"] == "payload_too_large"
        async with http.get(f"{base}/v1/things/t2") as r:
            assert r.status == 404 and (await r.json())["message"] == "no thing t2"
        async with http.get(f"{base}/nowhere") as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        async with http.delete(f"{base}/v1/things") as r:
            assert r.status == 405 and "POST" in (await r.json())["message"]
        async with http.get(f"{base}/v1/boom") as r:
            body = await r.json()
            assert r.status == 500 and body["message"] == "internal server error"
            assert "hunter2" not in str(body) and len(body["trace_id"]) == 32
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200 and (await r.json())["checks"] == {"nats": "ok", "log": "ok"}
        async with http.get(f"{base}/openapi.json") as r:
            document = await r.json()
    # Metrics are labelled by route template, never by path.
    labels = {"method": "GET", "route": "/v1/things/{id}", "status": "404"}
    assert REGISTRY.get_sample_value("nexus_http_requests_total", labels) == 1.0
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert REGISTRY.get_sample_value("nexus_http_requests_total", unmatched) >= 1.0
    assert REGISTRY.get_sample_value("nexus_http_requests_total", {**labels, "route": "/v1/things/t2"}) is None
    # OpenAPI 3.1 from the route table and the msgspec Structs.
    assert document["openapi"] == "3.1.0"
    post = document["paths"]["/v1/things"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/NewThing"}
    assert set(post["responses"]) >= {"201", "400", "413"}
    assert document["components"]["schemas"]["NewThing"]["required"] == ["name", "size"]
    assert document["paths"]["/v1/things/{id}"]["get"]["parameters"][0]["name"] == "id"
    assert {"/healthz", "/readyz", "/metrics", "/openapi.json"} <= set(document["paths"])
    # A command handler answers over the bus.
    assert await svc.bus.request(cmd_subject("things", "echo"), b"hi", timeout=10) == b"echo:hi"


async def test_the_http_span_continues_the_callers_traceparent(service: tuple[Service, InMemorySpanExporter]) -> None:
    svc, exporter = service
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with aiohttp.ClientSession() as http:
        headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
        async with http.get(f"http://127.0.0.1:{svc.port}/v1/things/t1", headers=headers) as r:
            assert r.status == 200
    [span] = [s for s in exporter.get_finished_spans() if s.name == "GET /v1/things/{id}"]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent
    assert span.kind.name == "SERVER" and span.attributes["http.response.status_code"] == 200
