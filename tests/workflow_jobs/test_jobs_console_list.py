"""``GET /jobs``: the caller's jobs, newest first (the console's job pages list them).

Seed 000 has no list of jobs; the console needs one, and a job initiated but never executed must
not be lost to its owner. Each client sees its own only; an admin sees every client's; a second
replica over the same log lists the jobs the first one started; a tenant's oldest jobs drop out
of the listing past its bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.jobs import JobExecuted, JobInitiated
from nexus.runtime import Service
from nexus.services.workflow import jobapi
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.engine import WorkflowEngine
from nexus.services.workflow.jobapi import JOB_EXECUTED, JOB_INITIATED, JobIndex
from nexus.services.workflow.registry import WorkflowRegistry
from nexus.services.workflow.settings import load_settings
from nexus.services.workflow.view import ExecutionView

SCHEMA = {
    "id": "listed_input_v1",
    "type": "input",
    "definition": {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}},
}
# Waits for an event that never comes: an executed job stays IN PROGRESS while the test looks.
WORKFLOW = {
    "id": "listed",
    "name": "Listed",
    "input_schema_id": "listed_input_v1",
    "steps": [{"id": "wait", "type": "wait_event", "event": "com.example.never", "timeout_seconds": 600}],
}


@dataclass
class Replica:
    url: str
    engine: WorkflowEngine
    view: ExecutionView


@dataclass
class Jobs:
    log: MemoryEventLog
    replicas: list[Replica]
    keys: dict[str, str]

    async def call(self, who: str, method: str, path: str, body: Any = None, replica: int = 0) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers={"x-service-key": self.keys[who]}) as http,
            http.request(method, self.replicas[replica].url + path, json=body) as response,
        ):
            return response.status, await response.json()

    async def initiate(self, who: str, title: str, replica: int = 0) -> str:
        status, body = await self.call(who, "POST", "/job/initiate", {"workflowId": "listed", "title": title}, replica)
        assert status == 200, body
        return str(body["jobExecutionId"])


@pytest.fixture
async def jobs() -> AsyncIterator[Jobs]:
    log = MemoryEventLog()
    settings = load_settings({"NEXUS_WORKFLOW_PORT": "0", "NEXUS_WORKFLOW_BUNDLED": "none"})
    registry = WorkflowRegistry(log, settings.services)
    await registry.register_schema(SCHEMA)
    await registry.register_workflow(WORKFLOW)
    keys = {
        "alpha": (await issue_key(log, "client", "alpha")).secret,
        "beta": (await issue_key(log, "client", "beta")).secret,
        "admin": (await issue_key(log, "client", "ops", scopes=("admin",))).secret,
    }
    replicas: list[Replica] = []
    servers: list[TestServer] = []
    try:
        for _ in range(2):
            # Two replicas over one log: each folds the jobs the other appends.
            replica_registry = WorkflowRegistry(log, settings.services)
            await replica_registry.load()
            view = ExecutionView(log)
            await view.load()
            view.start_tail()
            engine = WorkflowEngine(log, replica_registry, view, services=settings.services, concurrency=4)
            await engine.start_processing()
            ctx = WorkflowContext(
                settings=settings, log=log, bus=None, raw=None, engine=engine, registry=replica_registry, views=view
            )
            service = Service(settings, log=log, bus=MemoryBus())
            jobapi.install(service, ctx)
            server = TestServer(service.app, host="127.0.0.1", port=0)
            await server.start_server()
            servers.append(server)
            replicas.append(Replica(str(server.make_url("")).rstrip("/"), engine, view))
        yield Jobs(log, replicas, keys)
    finally:
        for server in servers:
            await server.close()
        for replica in replicas:
            await replica.engine.stop_processing()
            await replica.view.stop()
        await log.close()


async def test_a_client_lists_its_own_jobs_newest_first_and_an_admin_every_clients(jobs: Jobs) -> None:
    first = await jobs.initiate("alpha", "first")
    second = await jobs.initiate("alpha", "second")
    theirs = await jobs.initiate("beta", "beta's")
    status, body = await jobs.call(
        "alpha",
        "POST",
        "/job/execute",
        {"jobExecutionId": first, "jobPayloadSchemaInstance": {"title": {"value": "x"}}},
    )
    assert status == 200, body

    status, body = await jobs.call("alpha", "GET", "/jobs")
    assert status == 200, body
    assert [j["jobExecutionId"] for j in body["jobs"]] == [second, first]
    assert body["total"] == 2 and body["limit"] == 50 and body["offset"] == 0
    never_run, run = body["jobs"]
    # A job initiated and never executed is listed, said to be waiting for its payload.
    assert never_run["title"] == "second" and never_run["executionId"] is None
    assert never_run["status"] == "IN PROGRESS" and never_run["stage"] == "initiated"
    assert run["executionId"] and run["status"] == "IN PROGRESS" and run["executionStatus"] in ("QUEUED", "RUNNING")
    assert run["workflowId"] == "listed" and run["owner"] == "alpha" and run["createdAt"]

    status, body = await jobs.call("beta", "GET", "/jobs")
    assert [j["jobExecutionId"] for j in body["jobs"]] == [theirs]

    status, body = await jobs.call("admin", "GET", "/jobs")
    assert [(j["jobExecutionId"], j["owner"]) for j in body["jobs"]] == [
        (theirs, "beta"),
        (second, "alpha"),
        (first, "alpha"),
    ]
    assert body["total"] == 3


async def test_pages_and_bad_paging_in_seed_000s_error_shape(jobs: Jobs) -> None:
    made = [await jobs.initiate("alpha", f"job {n}") for n in range(5)]
    status, body = await jobs.call("alpha", "GET", "/jobs?limit=2&offset=1")
    assert status == 200
    assert [j["jobExecutionId"] for j in body["jobs"]] == [made[3], made[2]]
    assert body["total"] == 5
    status, body = await jobs.call("alpha", "GET", "/jobs?limit=0")
    assert status == 400 and body["success"] is False and "limit" in body["error"]
    status, body = await jobs.call("alpha", "GET", "/jobs?offset=minus")
    assert status == 400 and "offset" in body["error"]
    async with aiohttp.ClientSession() as http, http.get(jobs.replicas[0].url + "/jobs") as response:
        assert response.status == 401


async def test_a_job_initiated_on_one_replica_is_listed_by_the_other(jobs: Jobs) -> None:
    job_id = await jobs.initiate("alpha", "elsewhere", replica=0)
    # The initiating replica lists it at once (its initiate answers once its own fold has it);
    # the other one folds it from the log a moment later.
    status, body = await jobs.call("alpha", "GET", "/jobs", replica=0)
    assert [j["jobExecutionId"] for j in body["jobs"]] == [job_id]
    for _ in range(200):
        status, body = await jobs.call("alpha", "GET", "/jobs", replica=1)
        assert status == 200, body
        if body["jobs"]:
            break
        await asyncio.sleep(0.01)
    assert [j["title"] for j in body["jobs"]] == ["elsewhere"]


def _at(event: CloudEvent, position: int) -> CloudEvent:
    """The event as the log hands it over, at ``position``."""
    return msgspec.structs.replace(event, position=position)


def _initiated(position: int, job_id: str, owner: str) -> CloudEvent:
    data = JobInitiated(job_id=job_id, workflow_id="w", title=job_id, owner=owner)
    return _at(new_event(JOB_INITIATED, data, source="test", subject=job_id), position)


def test_a_tenants_oldest_jobs_drop_out_of_the_listing_past_its_bound() -> None:
    index = JobIndex(per_tenant=3)
    for n in range(5):
        index.apply(_initiated(n + 1, f"a{n}", "alpha"))
    index.apply(_initiated(6, "b0", "beta"))
    executed = new_event(
        JOB_EXECUTED, JobExecuted(job_id="a4", workflow_id="w", execution_id="e4", input={}), source="test"
    )
    index.apply(_at(executed, 7))
    assert [j.job_id for j in index.listing("alpha", limit=10)] == ["a4", "a3", "a2"]
    assert index.count("alpha") == 3 and "a0" not in index.jobs
    assert index.jobs["a4"].execution_id == "e4"
    # Every tenant's, merged newest first, one page at a time.
    assert [j.job_id for j in index.listing(None, limit=3)] == ["b0", "a4", "a3"]
    assert [j.job_id for j in index.listing(None, limit=3, offset=3)] == ["a2"]
    with pytest.raises(ValueError, match="per_tenant"):
        JobIndex(per_tenant=0)
