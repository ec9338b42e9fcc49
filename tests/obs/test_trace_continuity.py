"""One trace per execution, across every process of ``nexus up`` (issue 17).

The test runs the whole platform with ``NEXUS_OTEL_EXPORTER=otlp`` pointed at an OTLP/HTTP
receiver of its own (an aiohttp route decoding the protobuf export requests), then:

1. runs a workflow of three steps across services: an ``api_call`` to ``core`` (the
   granulator's ``/generate``), a ``task`` command to the granulator over NATS, and an
   ``api_call`` to the studio;
2. publishes an external event that a trigger turns into an execution of the same workflow;
3. starts an execution that waits for an external event, kills the workflow service with
   ``kill -9`` while it waits, lets the supervisor restart it, and releases the wait.

Each execution must be one connected trace: every span of the execution (its attempts, the
callee's server spans, the appends, the relay's publishes, the consumers) in one trace id,
every span's parent exported, one root. Over every span the platform exported, at least
99.9 % have their parent exported (the figure is printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from otlp_receiver import Span, otlp_receiver

from nexus.config import PlatformSettings
from nexus.eventlog import open_event_log
from nexus.ingest import register_producer
from nexus.testing import RunningPlatform, running_platform

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.timeout(240)]

CLIENT = "tests"
SOURCE = "tracer"
WORKFLOW = {
    "id": "traced_steps",
    "name": "Three steps across services",
    "steps": [
        {
            "id": "expand",
            "type": "api_call",
            "service": "core",
            "endpoint": "/generate",
            "method": "POST",
            "input_map": {"prompt": "Expand: {$.input.text}", "max_tokens": 40},
        },
        {
            "id": "again",
            "type": "task",
            "service": "granulator",
            "command": "generate",
            "input_map": {"prompt": "Again: {$.input.text}", "max_tokens": 40},
            "timeout_seconds": 30,
        },
        {
            "id": "providers",
            "type": "api_call",
            "service": "studio",
            "endpoint": "/providers",
            "method": "GET",
        },
    ],
}
WAITING = {
    "id": "traced_wait",
    "name": "A step, a wait for an external event, a step",
    "steps": [
        {
            "id": "expand",
            "type": "api_call",
            "service": "core",
            "endpoint": "/generate",
            "method": "POST",
            "input_map": {"prompt": "Expand: {$.input.text}", "max_tokens": 40},
        },
        {"id": "release", "type": "wait_event", "event": "com.tracer.release", "timeout_seconds": 90},
        {
            "id": "after",
            "type": "api_call",
            "service": "core",
            "endpoint": "/generate",
            "method": "POST",
            "input_map": {"prompt": "After: {$.input.text}", "max_tokens": 40},
        },
    ],
}
TRIGGER = {
    "id": "on_tracer_anomaly",
    "event_type": f"ext.{SOURCE}.anomaly",
    "workflow_id": "traced_steps",
    "input_map": {"text": "$.data.text"},
}


def _children(pid: int) -> dict[int, str]:
    """Every descendant process of ``pid`` with its command line (from /proc)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 45.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


class Platform:
    """The running platform as the test drives it: the client's HTTP calls and NATS."""

    def __init__(self, up: RunningPlatform, http: aiohttp.ClientSession) -> None:
        self.up = up
        self.http = http

    async def post(self, path: str, body: Any) -> Any:
        async with self.http.post(self.up.workflow_url + path, json=body) as response:
            assert response.status in (200, 201, 202), f"{path}: {response.status} {await response.text()}"
            return await response.json()

    async def execution(self, execution_id: str) -> dict[str, Any]:
        try:
            async with self.http.get(f"{self.up.workflow_url}/executions/{execution_id}") as response:
                if response.status != 200:
                    return {}
                body: dict[str, Any] = await response.json()
                return body
        except aiohttp.ClientError:
            return {}  # the workflow service is restarting

    async def finished(self, execution_id: str) -> dict[str, Any]:
        state: dict[str, Any] = {}

        async def done() -> bool:
            nonlocal state
            state = await self.execution(execution_id)
            return state.get("status") in ("COMPLETED", "FAILED", "COMPENSATED", "CANCELLED", "TIMED_OUT")

        await _until(done, f"execution {execution_id} to finish\n{self.up.output_tail()}", 60)
        assert state["status"] == "COMPLETED", state
        return state

    async def publish_external(self, event_type: str, data: dict[str, Any]) -> None:
        nc = await nats.connect(self.up.nats_url)
        try:
            event = {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "https://tracer.example/detector",
                "type": event_type,
                "time": "2026-11-25T10:00:00Z",
                "datacontenttype": "application/json",
                "data": data,
            }
            name = event_type.rsplit(".", 1)[-1]
            await nc.jetstream().publish(f"nexus.ext.{SOURCE}.{name}", json.dumps(event).encode())
        finally:
            await nc.close()


def _execution_trace(spans: list[Span], execution_id: str) -> tuple[str, list[Span]]:
    """The one trace id of the execution's spans, and every span of that trace."""
    own = [s for s in spans if s.attributes.get("nexus.execution.id") == execution_id]
    assert own, f"no span names execution {execution_id}"
    trace_ids = {s.trace_id for s in own}
    assert len(trace_ids) == 1, f"execution {execution_id} is spread over {len(trace_ids)} traces"
    [trace_id] = trace_ids
    return trace_id, [s for s in spans if s.trace_id == trace_id]


def _check_connected(trace: list[Span], what: str) -> Span:
    """Every span's parent is in the trace and there is one root; the root."""
    ids = {s.span_id for s in trace}
    orphans = [s for s in trace if s.parent_id and s.parent_id not in ids]
    assert not orphans, f"{what}: spans whose parent was not exported: {[(s.service, s.name) for s in orphans]}"
    roots = [s for s in trace if not s.parent_id]
    assert len(roots) == 1, f"{what}: {len(roots)} roots: {[(s.service, s.name) for s in roots]}"
    return roots[0]


async def test_each_execution_is_one_connected_trace_across_processes_and_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with otlp_receiver() as (receiver, endpoint):
        env = {
            "NEXUS_OTEL_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
            # Spans leave each process within 50 ms of ending: a kill -9 loses only what was open.
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "NEXUS_LOG_LEVEL": "info",
        }
        async with running_platform(tmp_path / "nexus", env=env, ready_timeout=90) as up:
            key = await up.client_key(CLIENT)
            log = await open_event_log(PlatformSettings.from_env(up.env).event_log_url)
            try:
                # External events of source "tracer" are the test client's.
                await register_producer(log, SOURCE, CLIENT)
            finally:
                await log.close()
            async with aiohttp.ClientSession(headers={"x-service-key": key}) as http:
                platform = Platform(up, http)
                await platform.post("/workflows", WORKFLOW)
                await platform.post("/workflows", WAITING)
                await platform.post("/triggers", TRIGGER)

                # 1. Three steps across services, started by a request.
                started = await platform.post("/executions", {"workflow_id": "traced_steps", "input": {"text": "a"}})
                direct = started["id"]
                await platform.finished(direct)

                # 2. An external event fires a trigger.
                await platform.publish_external("com.tracer.anomaly", {"text": "b"})
                triggered = ""

                async def trigger_started() -> bool:
                    nonlocal triggered
                    async with http.get(f"{up.workflow_url}/executions?workflow_id=traced_steps") as response:
                        body = await response.json()
                    items = body["executions"] if isinstance(body, dict) else body
                    others = [e["id"] for e in items if e["id"] != direct]
                    triggered = others[0] if others else ""
                    return bool(triggered)

                await _until(trigger_started, "the trigger's execution")
                await platform.finished(triggered)

                # 3. kill -9 of the workflow service while an execution waits; it resumes after the restart.
                started = await platform.post("/executions", {"workflow_id": "traced_wait", "input": {"text": "c"}})
                survivor = started["id"]

                async def waiting() -> bool:
                    state = await platform.execution(survivor)
                    steps = state.get("steps") or {}
                    release = steps.get("release") if isinstance(steps, dict) else None
                    return bool(release) and release.get("status") == "running"

                await _until(waiting, "the wait step to start")
                await asyncio.sleep(1.0)  # what ended is exported (50 ms batches)
                [workflow_pid] = [
                    pid for pid, command in _children(up.process.pid).items() if "nexus.services.workflow" in command
                ]
                before_kill = len(receiver.spans)
                os.kill(workflow_pid, signal.SIGKILL)

                async def restarted() -> bool:
                    pids = [p for p, c in _children(up.process.pid).items() if "nexus.services.workflow" in c]
                    if not pids or workflow_pid in pids:
                        return False
                    try:
                        async with http.get(f"{up.workflow_url}/readyz") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await _until(restarted, "the workflow service to be restarted")
                await asyncio.sleep(1.0)  # the restarted replica takes its execution back and waits again
                await platform.publish_external("com.tracer.release", {"text": "go"})
                final = await platform.finished(survivor)
                assert final["steps"]["after"]["status"] == "completed", final
            await asyncio.sleep(1.0)
        # The platform stopped: every process flushed what it had left.

    spans = receiver.spans
    assert spans, "nothing was exported"
    by_id = {(s.trace_id, s.span_id) for s in spans}

    # 1: one trace from the request to the last step, through the granulator and the studio.
    _, trace = _execution_trace(spans, direct)
    root = _check_connected(trace, "the direct execution")
    assert root.service == "nexus-workflow" and root.name == "POST /executions", root
    services = {s.service for s in trace}
    assert {"nexus-workflow", "nexus-granulator", "nexus-studio", "nexus-relay"} <= services, services
    attempts = [s for s in trace if s.name.startswith("step ")]
    assert sorted(s.attributes["nexus.workflow.step"] for s in attempts) == ["again", "expand", "providers"]
    for attempt in attempts:
        assert attempt.attributes["nexus.workflow.outcome"] == "completed", attempt
        assert attempt.attributes["nexus.workflow.attempt"] == 1
        assert attempt.attributes["nexus.workflow.id"] == "traced_steps"
    callee = {s.parent_id for s in trace if s.service != "nexus-workflow" and s.name in ("POST /generate",)}
    assert callee & {s.span_id for s in attempts}, "the granulator's server span is not a child of an attempt"
    assert any(s.name == "consume" and s.service == "nexus-granulator" for s in trace), "the task command"
    assert any(s.name == "publish" and s.service == "nexus-relay" for s in trace), "the relay's publish"

    # 2: the trigger's execution is in the trace of the ingest of the external event.
    _, trace = _execution_trace(spans, triggered)
    root = _check_connected(trace, "the triggered execution")
    assert root.service == "nexus-relay" and root.name == "consume", root  # the ingest's handling
    assert any(s.name == "trigger on_tracer_anomaly" for s in trace)

    # 3: the survivor's spans, before and after kill -9, are one connected trace.
    _, trace = _execution_trace(spans, survivor)
    _check_connected(trace, "the execution that survived kill -9")
    # The attempt open at the kill is lost with its process; the restarted one resumes the wait.
    resumed = [s for s in trace if s.name == "step release" and s.attributes.get("nexus.workflow.resumed")]
    assert resumed, "the resumed wait is not in the execution's trace"
    assert [s.attributes["nexus.workflow.step"] for s in trace if s.name == "step after"] == ["after"]
    # What the first process did before it died is in the same trace.
    assert any(s.name == "step expand" and s.trace_id == resumed[0].trace_id for s in spans[:before_kill])

    # Over everything exported: the share of spans whose parent was exported too.
    with_parent = [s for s in spans if s.parent_id]
    found = sum(1 for s in with_parent if (s.trace_id, s.parent_id) in by_id)
    share = found / len(with_parent)
    missing = sorted({(s.service, s.name) for s in with_parent if (s.trace_id, s.parent_id) not in by_id})
    # Shown in every run (not only with -s): the figure the issue asks CI to report.
    with capsys.disabled():
        print(
            f"\ntrace continuity: {len(spans)} spans exported in {receiver.requests} requests, "
            f"{len(spans) - len(with_parent)} roots, {found}/{len(with_parent)} = {share:.4%} "
            "with their parent exported" + (f"; parents missing for {missing}" if missing else "")
        )
    assert share >= 0.999, missing
