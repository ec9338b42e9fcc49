"""The platform of the end-to-end tests, assembled from its real parts over a real nats-server.

A ``Platform`` holds what ``nexus up`` would run, in this process: the outbox relay and the
external ingest (each with its own NATS connection, sharing one SQLite log in tmp_path, as
the relay process and a service would share the file), and the workflow service built by its
own ``bootstrap`` from environment-style settings, so it opens its own log, its own
JetStreamBus and its own Raw store. A stub HTTP service on port 0 stands behind the
workflow's step. The test side speaks NATS with plain nats-py, as an external producer or a
downstream consumer would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from nexus.auth import issue_key
from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog import EventLog, open_event_log
from nexus.ingest import ExtIngest, register_producer
from nexus.relay import Relay
from nexus.runtime import Service
from nexus.services.workflow.bootstrap import bootstrap
from nexus.services.workflow.settings import load_settings

WAIT = 15.0
"""Seconds any single wait may take before the test fails (nothing hangs)."""

SCHEMA = """
id: anomaly_job_input_v1
type: input
definition:
  type: object
  required: [title, confidence, region]
  properties:
    title: {type: string, minLength: 1}
    confidence: {type: number}
    region: {type: string}
"""
WORKFLOW = """
id: anomaly_job
name: Anomaly job
input_schema_id: anomaly_job_input_v1
steps:
  - id: analyze
    service: gaia
    endpoint: /analyze
    input_map:
      title: $.input.title
      confidence: $.input.confidence
      region: $.input.region
    retry: {max_attempts: 1}
output:
  verdict: $.steps.analyze.output.verdict
"""
TRIGGER = """
id: gaia_anomaly
event_type: ext.gaia.anomaly
condition: $.data.severity == 'high'
workflow_id: anomaly_job
input_map:
  title: $.data.title
  confidence: $.data.confidence
  region: $.data.location.region
"""
EXT_SUBJECT = "nexus.ext.gaia.anomaly"
EXT_SOURCE = "https://gaia.example/detector"


def anomaly(title: str, severity: str = "high", *, event_id: str | None = None) -> dict[str, Any]:
    """A CloudEvent as an external producer writes it (structured JSON mode), as a dict."""
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": EXT_SOURCE,
        "type": "com.gaia.anomaly.detected",
        "time": "2026-11-19T10:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "title": title,
            "severity": severity,
            "confidence": 0.97,
            "location": {"region": "tohoku", "lat": 38.3, "lng": 142.4},
        },
    }


def expected_input(event: dict[str, Any]) -> dict[str, Any]:
    """What the trigger's input_map makes of ``event``."""
    data = event["data"]
    return {"title": data["title"], "confidence": data["confidence"], "region": data["location"]["region"]}


async def within(awaitable: Awaitable[Any], what: str, seconds: float = WAIT) -> Any:
    """``await`` with a deadline; a timeout fails the test naming what did not happen."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds:g} s") from None


@dataclass
class Stub:
    """The service behind the workflow's step: records each call, answers a verdict."""

    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)


async def stub_app(calls: list[dict[str, Any]]) -> web.Application:
    async def analyze(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append(body)
        return web.json_response({"verdict": f"confirmed: {body['title']}"})

    app = web.Application()
    app.router.add_post("/analyze", analyze)
    return app


class Platform:
    """Relay, ingest and workflow service over one nats-server and one SQLite log file."""

    def __init__(self, nats_url: str, data_dir: Path, stub: Stub) -> None:
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.stub = stub
        self.log_url = f"sqlite:///{data_dir / 'events.db'}"
        self.log: EventLog | None = None
        """The log of the relay and the ingest (the workflow service opens its own)."""
        self.key = ""
        self._relay_bus: JetStreamBus | None = None
        self.relay: Relay | None = None
        self._ingest_bus: JetStreamBus | None = None
        self.ingest: ExtIngest | None = None
        self.workflow: Service | None = None
        self.nc: NatsClient | None = None
        """The test's own plain nats-py connection (the external producer, downstream consumers)."""
        self.js: JetStreamContext | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        self.log = await open_event_log(self.log_url)
        self.key = (await issue_key(self.log, "client", "e2e")).secret
        # The detector's events are client e2e's (as `nexus keys create --producer gaia --tenant e2e`).
        await register_producer(self.log, "gaia", "e2e")
        self.nc = await nats.connect(self.nats_url)
        self.js = self.nc.jetstream()
        await self.start_relay()
        await self.start_ingest()
        await self.start_workflow()

    async def close(self) -> None:
        await self.stop_workflow()
        await self.stop_ingest()
        await self.stop_relay()
        if self.nc is not None:
            await self.nc.close()
        if self.log is not None:
            await self.log.close()

    async def start_relay(self) -> None:
        assert self.log is not None
        self._relay_bus = await JetStreamBus.connect(self.nats_url, name="e2e-relay")
        self.relay = Relay(self.log, self._relay_bus, lease=False)
        await self.relay.start()

    async def stop_relay(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        if self._relay_bus is not None:
            await self._relay_bus.close()
            self._relay_bus = None

    async def start_ingest(self) -> None:
        assert self.log is not None
        self._ingest_bus = await JetStreamBus.connect(self.nats_url, name="e2e-ingest")
        self.ingest = ExtIngest(self._ingest_bus, self.log)
        await self.ingest.start()

    async def stop_ingest(self) -> None:
        if self.ingest is not None:
            await self.ingest.stop()
            self.ingest = None
        if self._ingest_bus is not None:
            await self._ingest_bus.close()
            self._ingest_bus = None

    async def start_workflow(self) -> None:
        settings = load_settings(
            {
                "NEXUS_WORKFLOW_PORT": "0",
                "NEXUS_DATA_DIR": str(self.data_dir),
                "NEXUS_EVENT_LOG_URL": self.log_url,
                "NEXUS_NATS_URL": self.nats_url,
                "NEXUS_RAW_URL": f"file://{self.data_dir / 'raw'}",
                "NEXUS_WORKFLOW_BUNDLED": "none",
                "NEXUS_WORKFLOW_REPLICA_ID": "e2e-workflow",
                "NEXUS_SERVICE_GAIA": self.stub.url,
            }
        )
        # No adapter injected: the service opens the SQLite log, connects its JetStreamBus to
        # NEXUS_NATS_URL and opens Raw, as `python -m nexus.services.workflow` does.
        self.workflow = await bootstrap(settings)
        await self.workflow.start()

    async def stop_workflow(self) -> None:
        if self.workflow is not None:
            await self.workflow.stop()
            self.workflow = None

    # -- the workflow service's HTTP API ------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.workflow is not None and self.workflow.port
        return f"http://127.0.0.1:{self.workflow.port}"

    async def http(self, method: str, path: str, *, data: str | None = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers={"x-service-key": self.key}) as session,
            session.request(method, self.url + path, data=data, timeout=aiohttp.ClientTimeout(total=WAIT)) as resp,
        ):
            return resp.status, await resp.json()

    async def register_job(self) -> None:
        """The schema, the workflow and the trigger, over HTTP as a user registers them."""
        for path, document in (("/schemas", SCHEMA), ("/workflows", WORKFLOW), ("/triggers", TRIGGER)):
            status, body = await self.http("POST", path, data=document)
            assert status == 201, (path, body)

    async def executions(self) -> list[dict[str, Any]]:
        status, body = await self.http("GET", "/executions?workflow_id=anomaly_job&limit=1000")
        assert status == 200, body
        return list(body["executions"])

    # -- NATS, as an external producer and as a downstream user ---------------------------------

    async def produce(self, payload: dict[str, Any] | bytes, subject: str = EXT_SUBJECT) -> int:
        """Publish on nexus.ext.… with plain nats-py; the NEXUS_EXT sequence it got."""
        assert self.js is not None
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        ack = await self.js.publish(subject, body, timeout=WAIT)
        assert ack.stream == "NEXUS_EXT" and not ack.duplicate
        return int(ack.seq)

    async def completions(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        """A core subscription to completed executions; the returned call awaits the next one."""
        assert self.nc is not None
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            await queue.put(json.loads(msg.data))

        await self.nc.subscribe("nexus.evt.workflow.execution.completed", cb=on_msg)
        await self.nc.flush()

        async def next_completion() -> dict[str, Any]:
            return await within(queue.get(), "an execution.completed event on nexus.evt.workflow.execution.completed")

        return next_completion
