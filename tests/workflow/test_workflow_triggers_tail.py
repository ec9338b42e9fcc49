"""The triggers' tail reads only the event types some trigger names, and follows a new type from
right after the registration that brings it (by this replica or another one)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nexus.eventlog import EventLog, open_event_log
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.jobs import TriggerRegistered
from nexus.services.workflow.triggers import (
    TRIGGER_ENGINE,
    TRIGGER_REGISTERED,
    TRIGGER_REMOVED,
    TRIGGERS_STREAM,
    TriggerEngine,
    fired_stream,
)

ServiceFactory = Callable[..., Awaitable[Any]]
"""The ``workflow_service`` fixture of this folder's conftest."""
Running = Any

TENANT = "workflow-tests"
"""The tenant of the client key the fixture's service issues."""


async def _fired(log: EventLog, trigger_id: str, event: CloudEvent, seconds: float = 10.0) -> None:
    stream = fired_stream(TENANT, trigger_id, event.id)
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await log.stream_version(stream):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"trigger {trigger_id} did not fire for {event.type} in {seconds} s")


@pytest.fixture(params=["memory", "sqlite"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> EventLog:
    """The service's log: the memory adapter and the SQLite one (which filters in its query)."""
    if request.param == "memory":
        return MemoryEventLog()
    return await open_event_log(f"sqlite:///{tmp_path / 'events.db'}")


async def _service(workflow_service: ServiceFactory, log: EventLog) -> tuple[Running, TriggerEngine, list[str]]:
    """A service with workflow ``flow``, and the types of the events its triggers are offered."""
    running = await workflow_service(log, modules=True)
    workflow = {"id": "flow", "steps": [{"id": "a", "service": "stub", "endpoint": "/echo", "input_map": {}}]}
    status, body = await running.post("/workflows", workflow)
    assert status == 201, body
    engine = running.service.app[TRIGGER_ENGINE]
    offered: list[str] = []
    handle = engine.handle

    async def recording(event: CloudEvent) -> list[str]:
        offered.append(event.type)
        return await handle(event)

    engine.handle = recording  # type: ignore[method-assign]  # a spy on the instance
    return running, engine, offered


async def _register(running: Running, trigger_id: str, event_type: str) -> None:
    status, body = await running.post("/triggers", {"id": trigger_id, "event_type": event_type, "workflow_id": "flow"})
    assert status == 201, body


async def test_the_tail_reads_only_the_types_triggers_name(workflow_service: ServiceFactory, log: EventLog) -> None:
    running, engine, offered = await _service(workflow_service, log)
    before = engine.followed_types()
    # The phases module's triggers, and the events that change the set.
    assert before is not None and {TRIGGER_REGISTERED, TRIGGER_REMOVED} < before
    await _register(running, "first", "nexus.test.first")
    assert engine.followed_types() == before | {"nexus.test.first"}
    noise = [new_event("nexus.test.noise", {"n": n}, source="test", tenant=TENANT) for n in range(20)]
    await log.append("noise", noise)
    [first] = await log.append("things", [new_event("nexus.test.first", {}, source="test", tenant=TENANT)])
    await _fired(log, "first", first)
    # The noise was never offered (nor fetched: the log filters it), nor were the executions'
    # own events, which no trigger names either.
    assert "nexus.test.noise" not in offered
    assert set(offered) <= before | {"nexus.test.first"}, offered
    assert offered.count("nexus.test.first") == 1


async def test_a_trigger_for_a_new_type_fires_for_an_event_right_after_its_registration(
    workflow_service: ServiceFactory, log: EventLog
) -> None:
    running, engine, _ = await _service(workflow_service, log)
    before = engine.followed_types()
    assert before is not None
    await _register(running, "first", "nexus.test.first")
    # Registered by this replica, the event appended at once after it: the tail was following
    # the old set when it read the registration, and must follow the new one after it.
    await _register(running, "second", "nexus.test.second")
    [second] = await log.append("things", [new_event("nexus.test.second", {}, source="test", tenant=TENANT)])
    await _fired(log, "second", second)
    # Registered by another replica (appended to the log only; this one learns it through its
    # tail), and the event appended before the tail could run: both in the tail's next read.
    spec = TriggerRegistered(
        trigger_id="third", event_type="nexus.test.third", workflow_id="flow", input_map={}, tenant=TENANT
    )
    registration = new_event(TRIGGER_REGISTERED, spec, source="test", subject="third", tenant=TENANT)
    await log.append(TRIGGERS_STREAM, [registration])
    [third] = await log.append("things", [new_event("nexus.test.third", {}, source="test", tenant=TENANT)])
    await _fired(log, "third", third)
    assert engine.followed_types() == before | {"nexus.test.first", "nexus.test.second", "nexus.test.third"}
    # An event registered before a trigger's registration does not fire it (as before the filter).
    assert await log.stream_version(fired_stream(TENANT, "third", second.id)) == 0


async def test_a_pattern_or_external_trigger_makes_the_tail_read_every_type(
    workflow_service: ServiceFactory, log: EventLog
) -> None:
    running, engine, offered = await _service(workflow_service, log)
    before = engine.followed_types()
    assert before is not None
    await _register(running, "first", "nexus.test.first")
    await _register(running, "any", "nexus.test.*")
    assert engine.followed_types() is None
    [noise] = await log.append("noise", [new_event("nexus.test.noise", {}, source="test", tenant=TENANT)])
    await _fired(log, "any", noise)
    assert "nexus.test.noise" in offered
    # Removing it narrows the tail again; an external event's trigger widens it once more, since
    # ext.<source>.<event> names the stream and the event's name, not the stored type.
    async with running.http.delete(running.url + "/triggers/any") as response:
        assert response.status == 200
    assert engine.followed_types() == before | {"nexus.test.first"}
    await _register(running, "gaia", "ext.gaia.anomaly")
    assert engine.followed_types() is None
