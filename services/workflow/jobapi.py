"""The job API of seed 000: paths, fields and status strings as a client written from it expects.

::

    GET  /workflow/{workflowId}      → {jobPayloadSchema: {field: {type, required}}}
    POST /job/initiate               {workflowId, title, description} → {jobExecutionId}
    POST /job/execute                {jobExecutionId, jobPayloadSchemaInstance} → {success, message}
    GET  /job/{id}/status            → {status: "IN PROGRESS" | "COMPLETED" | "FAILED"}
    GET  /job/{id}/results           → {results, data}
    GET  /job/{id}/audit             → {auditTrail}, read from the event log
    GET  /job/{id}/monitor           → Server-Sent Events until a final status
    GET  /api/opus/job/{id}/monitor  → the same stream at the seed's own path
    POST /job/{id}/monitor/token     → {accessToken, url}: opens the monitor from a browser
    POST /job/batch                  {workflowId, jobs: [...]} → {total, successful, failed, results}
    GET  /jobs                       → {jobs, total, limit, offset}: the caller's jobs, newest first

(``POST /job/file/upload`` and the presigned ``PUT`` live in ``uploads.py``.)

A job is stream ``job-<jobExecutionId>`` of the log: ``job.initiated``, then ``job.executed``
naming the execution the engine started. Every request carries an API key (``x-service-key``),
checked against the KeyView folded from the log; a job belongs to the client that initiated it,
and another client's key is answered 404 exactly as for a job that does not exist. Errors keep
seed 000's shape, ``{"success": false, "error": …}``, authentication's included.

A browser's ``EventSource`` sends no header: the monitor also takes the session cookie, or a
short-lived ``?access_token=`` minted by ``POST /job/{id}/monitor/token`` for the caller and
that one stream (``streamtokens.py``); a long-lived key in a URL is refused.

The seed has no list of jobs; ``GET /jobs`` adds one (the console's job pages show it), answered
from ``JobIndex``, a fold of the job events that every replica keeps from the log, so a job
initiated on one replica is listed by all, and one initiated but never executed is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo, can_see
from nexus.client import PayloadError, PayloadField, check_instance, job_payload_schema
from nexus.eventlog import ConcurrencyError, EventLog
from nexus.proto import PLATFORM_TENANT, CloudEvent, new_event, new_event_id
from nexus.proto.events.jobs import JobExecuted, JobInitiated
from nexus.replay import EventFold, LiveFold
from nexus.runtime import EventStream, HTTPError, Owned, Service, read_json
from nexus.services.workflow.context import FINAL_STATUSES, WorkflowContext
from nexus.services.workflow.errors import InactiveWorkflowError, InputValidationError, UnknownWorkflowError
from nexus.services.workflow.streamtokens import StreamTokenGranted, StreamTokens, mint_for
from nexus.services.workflow.streamtokens import install as install_stream_tokens

__all__ = [
    "JOBS_PER_TENANT",
    "JOB_API",
    "JOB_EXECUTED",
    "JOB_INITIATED",
    "JobApi",
    "JobIndex",
    "JobRecord",
    "JobSummary",
    "install",
    "job_status",
    "load_job",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SOURCE = "nexus/workflow"
JOB_INITIATED = "nexus.workflow.job.initiated"
JOB_EXECUTED = "nexus.workflow.job.executed"
IN_PROGRESS, COMPLETED, FAILED = "IN PROGRESS", "COMPLETED", "FAILED"
JOBS_PER_TENANT = 10_000
"""How many of a tenant's latest jobs ``GET /jobs`` lists (older ones stay readable by id)."""


class SeedError(msgspec.Struct, frozen=True, kw_only=True):
    """An error in seed 000's shape (more fields may follow, ``problems`` among them)."""

    success: bool
    """Always false."""
    error: str
    """What went wrong, in words meant for the caller."""


def seed_error(code: str, message: str) -> dict[str, object]:
    """Seed 000's error body for the route decorator's refusals (401, 403, 404)."""
    return {"success": False, "error": message}


def base_url(request: web.Request, public_url: str | None) -> str:
    """Where clients reach this service: the configured public URL (``WorkflowSettings.public_url``)
    or the request's origin."""
    return public_url or str(request.url.origin())


def fail(status: int, message: str, **extra: Any) -> web.HTTPException:
    """An error in seed 000's shape: ``{"success": false, "error": message}``."""
    body = json.dumps({"success": False, "error": message, **extra})
    classes: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        410: web.HTTPGone,
        413: web.HTTPRequestEntityTooLarge,
        503: web.HTTPServiceUnavailable,
    }
    cls = classes.get(status, web.HTTPInternalServerError)
    if cls is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(
            max_size=extra.get("max_bytes", 0),
            actual_size=extra.get("size", 0),
            text=body,
            content_type="application/json",
        )
    return cls(text=body, content_type="application/json")


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 saying what is wrong with it."""
    try:
        # The platform's one JSON reader (size, nesting, UTF-8), answered in seed 000's shape.
        body = await read_json(request, Any)
    except HTTPError as exc:
        raise fail(exc.status, exc.message) from None
    if not isinstance(body, dict):
        raise fail(400, "the body must be a JSON object")
    return body


def required_str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise fail(400, f"{name} is required and must be a non-empty string")
    return value


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi], or a 400 naming it."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise fail(400, f"query parameter {name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise fail(400, f"query parameter {name}={value} must be between {lo} and {hi}")
    return value


# --- jobs as streams in the log ----------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """A job folded from stream ``job-<id>``."""

    job_id: str
    workflow_id: str
    title: str
    description: str
    owner: str
    execution_id: str | None
    events: list[CloudEvent]


def job_stream(job_id: str) -> str:
    return f"job-{job_id}"


async def load_job(log: EventLog, job_id: str) -> JobRecord | None:
    """The job's record from the log, or None when no job has this id."""
    events = await log.read_stream(job_stream(job_id))
    if not events or events[0].type != JOB_INITIATED:
        return None
    initiated = msgspec.convert(events[0].data, JobInitiated)
    execution_id = None
    for event in events[1:]:
        if event.type == JOB_EXECUTED:
            execution_id = msgspec.convert(event.data, JobExecuted).execution_id
    return JobRecord(
        job_id=job_id,
        workflow_id=initiated.workflow_id,
        title=initiated.title,
        description=initiated.description,
        owner=initiated.owner,
        execution_id=execution_id,
        events=events,
    )


# --- the list of jobs --------------------------------------------------------------------------


@dataclass
class JobSummary:
    """One job as ``GET /jobs`` lists it."""

    job_id: str
    workflow_id: str
    title: str
    description: str
    owner: str
    created_at: str | None
    position: int
    """The log position of its ``job.initiated``: the listing's order, newest first."""
    execution_id: str | None = None


class JobIndex(EventFold):
    """Each tenant's jobs in the order they were initiated, folded from ``job.initiated`` and
    ``job.executed``; at most ``per_tenant`` of a tenant's latest are kept (the oldest drop out
    of the listing, not out of the log).

    Args:
        per_tenant: How many jobs of one tenant are kept.
    """

    def __init__(self, per_tenant: int = JOBS_PER_TENANT) -> None:
        super().__init__()
        if per_tenant <= 0:
            raise ValueError("per_tenant must be positive")
        self.per_tenant = per_tenant
        self.jobs: dict[str, JobSummary] = {}
        self._tenants: dict[str, OrderedDict[str, None]] = {}

    def _initiated(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, JobInitiated)
        tenant = data.owner or PLATFORM_TENANT
        self.jobs[data.job_id] = JobSummary(
            job_id=data.job_id,
            workflow_id=data.workflow_id,
            title=data.title,
            description=data.description,
            owner=tenant,
            created_at=event.time,
            position=event.position or 0,
        )
        ordered = self._tenants.setdefault(tenant, OrderedDict())
        ordered[data.job_id] = None
        if len(ordered) > self.per_tenant:
            dropped, _ = ordered.popitem(last=False)
            self.jobs.pop(dropped, None)

    def _executed(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, JobExecuted)
        summary = self.jobs.get(data.job_id)
        if summary is not None:
            summary.execution_id = data.execution_id

    def _newest_first(self, tenant: str) -> Iterator[JobSummary]:
        return (self.jobs[job_id] for job_id in reversed(self._tenants.get(tenant, {})))

    def count(self, tenant: str | None) -> int:
        """How many jobs are listed for ``tenant`` (None: every tenant's)."""
        if tenant is not None:
            return len(self._tenants.get(tenant, ()))
        return len(self.jobs)

    def listing(self, tenant: str | None, *, limit: int, offset: int = 0) -> list[JobSummary]:
        """``tenant``'s jobs (None: every tenant's, merged), newest first, one page."""
        if tenant is not None:
            ordered: Iterator[JobSummary] = self._newest_first(tenant)
        else:
            # Each tenant's jobs are in log order already: a lazy merge reads only the page.
            ordered = heapq.merge(*(self._newest_first(t) for t in self._tenants), key=lambda j: -j.position)
        return list(itertools.islice(ordered, offset, offset + limit))


JobIndex.handlers = {JOB_INITIATED: JobIndex._initiated, JOB_EXECUTED: JobIndex._executed}


def job_status(execution_status: str | None) -> str:
    """Seed 000's status string for an engine status: COMPLETED, FAILED, or IN PROGRESS."""
    if execution_status == "COMPLETED":
        return COMPLETED
    if execution_status in FINAL_STATUSES:
        return FAILED
    return IN_PROGRESS


def _field(state: Any, *names: str) -> Any:
    for name in names:
        if hasattr(state, name):
            return getattr(state, name)
    return None


def state_json(state: Any) -> dict[str, Any]:
    """The parts of an ExecutionState a job client sees."""
    if state is None:
        return {}
    if isinstance(state, msgspec.Struct):
        built: dict[str, Any] = msgspec.to_builtins(state)
        return built
    if hasattr(state, "to_json"):
        shown: dict[str, Any] = state.to_json()
        return shown
    return {k: v for k, v in vars(state).items() if not k.startswith("_")}


async def _job_for(request: web.Request, ctx: WorkflowContext, job_id: str | None = None) -> JobRecord:
    job_id = job_id or request.match_info["id"]
    job = await load_job(ctx.log, job_id)
    # Another client's job is answered exactly like a missing one: an id tells nothing.
    if job is None or not can_see(request[AUTH], job.owner or PLATFORM_TENANT):
        raise fail(404, f"no job with jobExecutionId {job_id!r}")
    return job


async def _state(ctx: WorkflowContext, execution_id: str) -> Any:
    state = ctx.engine.get(execution_id)
    if state is None:
        state = await ctx.engine.load(execution_id)
    return state


def status_body(job: JobRecord, state: Any) -> dict[str, Any]:
    """The body of ``/status`` and of each ``/monitor`` update."""
    body: dict[str, Any] = {"jobExecutionId": job.job_id, "workflowId": job.workflow_id}
    if job.execution_id is None or state is None:
        body.update(status=IN_PROGRESS, stage="initiated", executionId=job.execution_id)
        return body
    status = state.status
    body.update(
        status=job_status(status),
        executionStatus=status,
        executionId=job.execution_id,
        currentStep=_field(state, "current_step"),
    )
    error = _field(state, "error")
    if error:
        body["error"] = error
    if status == "COMPLETED":
        body["results"] = _field(state, "output")
    return body


# --- handlers ----------------------------------------------------------------------------------


class JobApi:
    """The job routes over one WorkflowContext."""

    def __init__(self, ctx: WorkflowContext, stream_tokens: StreamTokens | None = None) -> None:
        self.ctx = ctx
        self.stream_tokens = stream_tokens
        """Mints the monitor's ``?access_token=`` (None: ``POST /job/{id}/monitor/token`` answers 503)."""
        self.index = LiveFold(ctx.log, JobIndex(), types=(JOB_INITIATED, JOB_EXECUTED), name="jobs")
        """The jobs of every tenant (``GET /jobs``); the job events are appended through it, so
        a job is listed as soon as its initiate answers (read-your-writes)."""

    async def tenant_of(self, job_id: str) -> str | None:
        """The tenant that owns the job, or None when there is no such job."""
        job = await load_job(self.ctx.log, job_id)
        return (job.owner or PLATFORM_TENANT) if job is not None else None

    def _payload_schema(self, workflow_id: str, tenant: str) -> tuple[Any, dict[str, PayloadField]]:
        """The workflow ``tenant`` may run and its jobPayloadSchema (404/400 in seed 000's shape)."""
        workflow = self.ctx.registry.get_workflow(workflow_id, tenant=tenant)
        if workflow is None:
            raise fail(404, f"workflow {workflow_id!r} is not registered")
        schema_id = getattr(workflow, "input_schema_id", None)
        definition: Mapping[str, Any] = {"type": "object", "properties": {}}
        if schema_id:
            schema = self.ctx.registry.get_schema(schema_id, tenant=tenant)
            if schema is None:
                raise fail(404, f"input schema {schema_id!r} of workflow {workflow_id!r} is not registered")
            definition = schema.definition
        try:
            return workflow, job_payload_schema(definition)
        except PayloadError as exc:
            raise fail(400, f"workflow {workflow_id!r} cannot take a job payload: {exc}") from None

    async def get_workflow(self, request: web.Request) -> web.Response:
        workflow_id = request.match_info["workflowId"]
        workflow, fields = self._payload_schema(workflow_id, request[AUTH].tenant)
        return web.json_response(
            {
                "workflowId": workflow_id,
                "name": getattr(workflow, "name", workflow_id),
                "description": getattr(workflow, "description", ""),
                "version": getattr(workflow, "version", None),
                "jobPayloadSchema": {name: f.as_json() for name, f in fields.items()},
            }
        )

    async def _initiate(
        self,
        auth: KeyInfo,
        workflow_id: str,
        title: str,
        description: str,
        *,
        job_id: str | None = None,
        causation_id: str | None = None,
    ) -> str:
        """Record ``job.initiated``; a given ``job_id`` (derived from what caused the job) that
        exists already is answered as it is, so a cause redelivered initiates one job."""
        self._payload_schema(workflow_id, auth.tenant)
        job_id = job_id or new_event_id()
        data = JobInitiated(
            job_id=job_id,
            workflow_id=workflow_id,
            title=title,
            description=description,
            key_id=auth.key_id,
            owner=auth.tenant,
        )
        event = new_event(
            JOB_INITIATED,
            data,
            source=SOURCE,
            subject=job_id,
            correlationid=job_id,
            causationid=causation_id,
            tenant=auth.tenant,
        )
        try:
            await self.index.append(job_stream(job_id), [event], expected_version=0)
        except ConcurrencyError:
            if causation_id is None:
                raise
        return job_id

    async def start_job(
        self,
        auth: KeyInfo,
        workflow_id: str,
        title: str,
        description: str,
        instance: Any,
        *,
        job_id: str | None = None,
        causation_id: str | None = None,
    ) -> tuple[JobRecord, str]:
        """Initiate a job and execute it with ``instance`` (seed 000's steps 2 and 6 at once);
        the job and its execution id. Raises seed 000's 4xx as ``/job/execute`` does."""
        job_id = await self._initiate(auth, workflow_id, title, description, job_id=job_id, causation_id=causation_id)
        job = await load_job(self.ctx.log, job_id)
        if job is None or job.owner != auth.tenant or job.workflow_id != workflow_id:
            raise fail(409, f"job {job_id} exists for another workflow or client")
        return job, await self._execute(job, instance)

    async def initiate_job(self, auth: KeyInfo, workflow_id: str, title: str, description: str) -> str:
        """Seed 000's step 2 for a module that starts jobs itself (``POST /job/initiate``'s work)."""
        return await self._initiate(auth, workflow_id, title, description)

    async def execute_job(self, job: JobRecord, instance: Any) -> str:
        """Seed 000's step 6 for a module that starts jobs itself (``POST /job/execute``'s work)."""
        return await self._execute(job, instance)

    def payload_schema(self, workflow_id: str, tenant: str) -> dict[str, PayloadField]:
        """The jobPayloadSchema of a workflow ``tenant`` may run (seed 000's 404/400 otherwise)."""
        return self._payload_schema(workflow_id, tenant)[1]

    async def initiate(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        workflow_id = required_str(body, "workflowId")
        title, description = body.get("title", ""), body.get("description", "")
        if not isinstance(title, str) or not isinstance(description, str):
            raise fail(400, "title and description must be strings")
        job_id = await self._initiate(request[AUTH], workflow_id, title, description)
        return web.json_response({"success": True, "jobExecutionId": job_id})

    async def _execute(self, job: JobRecord, instance: Any) -> str:
        """Check the payload and start the execution; returns its id (idempotent per job)."""
        tenant = job.owner or PLATFORM_TENANT
        _, fields = self._payload_schema(job.workflow_id, tenant)
        try:
            workflow_input = check_instance(fields, instance)
        except PayloadError as exc:
            raise fail(400, str(exc), problems=exc.as_json()["problems"]) from None
        if job.execution_id is not None:
            return job.execution_id
        try:
            execution_id = await self.ctx.engine.start(
                job.workflow_id,
                workflow_input,
                idempotency_key=f"job:{job.job_id}",
                correlation_id=job.job_id,
                causation_id=job.events[0].id,
                trigger={"kind": "job", "job_id": job.job_id},
                tenant=tenant,
            )
        except InputValidationError as exc:
            raise fail(400, str(exc), problems=[{"field": p, "reason": m} for p, m in exc.problems]) from None
        except (UnknownWorkflowError, InactiveWorkflowError) as exc:
            raise fail(409, str(exc)) from None
        data = JobExecuted(
            job_id=job.job_id, workflow_id=job.workflow_id, execution_id=execution_id, input=workflow_input
        )
        event = new_event(
            JOB_EXECUTED, data, source=SOURCE, subject=job.job_id, correlationid=job.job_id, tenant=tenant
        )
        with contextlib.suppress(ConcurrencyError):
            # A concurrent execute of the same job got the same execution (same idempotency key).
            await self.index.append(job_stream(job.job_id), [event], expected_version=len(job.events))
        return execution_id

    async def execute(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        job_id = required_str(body, "jobExecutionId")
        if "jobPayloadSchemaInstance" not in body:
            raise fail(400, "jobPayloadSchemaInstance is required")
        job = await _job_for(request, self.ctx, job_id)
        already = job.execution_id is not None
        execution_id = await self._execute(job, body["jobPayloadSchemaInstance"])
        message = f"job {job_id} {'was already' if already else 'is'} executing as execution {execution_id}"
        return web.json_response({"success": True, "message": message, "executionId": execution_id})

    async def status(self, request: web.Request) -> web.Response:
        job = await _job_for(request, self.ctx)
        state = await _state(self.ctx, job.execution_id) if job.execution_id else None
        return web.json_response(status_body(job, state))

    async def results(self, request: web.Request) -> web.Response:
        job = await _job_for(request, self.ctx)
        state = await _state(self.ctx, job.execution_id) if job.execution_id else None
        body = status_body(job, state)
        if body["status"] == IN_PROGRESS:
            raise fail(
                409, f"job {job.job_id} is still in progress; wait for COMPLETED or FAILED", jobStatus=IN_PROGRESS
            )
        full = state_json(state)
        body["results"] = _field(state, "output")
        body["data"] = {"steps": full.get("steps", full.get("step_outputs")), "execution": full}
        return web.json_response(body)

    async def audit(self, request: web.Request) -> web.Response:
        job = await _job_for(request, self.ctx)
        events = list(job.events)
        if job.execution_id:
            events += await self.ctx.engine.history(job.execution_id)
        events.sort(key=lambda e: e.position or 0)
        trail = [
            {
                "id": e.id,
                "time": e.time,
                "type": e.type,
                "stream": e.streamid,
                "version": e.streamversion,
                "position": e.position,
                "hash": e.hash,
                "data": e.data,
            }
            for e in events
        ]
        return web.json_response({"jobExecutionId": job.job_id, "auditTrail": trail})

    async def monitor(self, request: web.Request) -> web.StreamResponse:
        job = await _job_for(request, self.ctx)
        keepalive = self.ctx.settings.sse_keepalive_seconds
        async with EventStream(request, keepalive=keepalive) as sse:
            sent: str | None = None

            async def send(body: dict[str, Any]) -> None:
                nonlocal sent
                text = json.dumps(body, default=str)
                if text != sent:
                    sent = text
                    await sse.send(text)

            # Before the job is executed there is no execution to watch: look at the job's stream.
            while job.execution_id is None:
                await send(status_body(job, None))
                await asyncio.sleep(min(0.25, keepalive))
                job = await load_job(self.ctx.log, job.job_id) or job
            async for state in sse.each(self.ctx.engine.watch(job.execution_id)):
                body = status_body(job, state)
                await send(body)
                if body["status"] != IN_PROGRESS:
                    break
        return sse.response

    async def monitor_token(self, request: web.Request) -> web.Response:
        """A short-lived token that opens this job's monitor at the seed's path from a browser."""
        job = await _job_for(request, self.ctx)
        if self.stream_tokens is None:
            raise fail(503, "stream tokens are not set up on this service")
        path = f"/api/opus/job/{job.job_id}/monitor"
        try:
            granted = mint_for(request, self.stream_tokens, path, self.ctx.settings.public_url)
        except HTTPError as exc:
            raise fail(exc.status, exc.message) from None
        return web.json_response(msgspec.to_builtins(granted), status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        auth: KeyInfo = request[AUTH]
        limit = _int_query(request, "limit", 50, 1, 1000)
        offset = _int_query(request, "offset", 0, 0, 10**9)
        # A client lists its own jobs; an admin every client's (each item names its owner).
        tenant = None if auth.is_admin else auth.tenant
        page = self.index.state.listing(tenant, limit=limit, offset=offset)
        return web.json_response(
            {
                "jobs": [self._listed(job) for job in page],
                "total": self.index.state.count(tenant),
                "limit": limit,
                "offset": offset,
            }
        )

    def _listed(self, job: JobSummary) -> dict[str, Any]:
        state = self.ctx.engine.get(job.execution_id) if job.execution_id else None
        item: dict[str, Any] = {
            "jobExecutionId": job.job_id,
            "workflowId": job.workflow_id,
            "title": job.title,
            "description": job.description,
            "owner": job.owner,
            "createdAt": job.created_at,
            "executionId": job.execution_id,
        }
        if job.execution_id is None:
            item.update(status=IN_PROGRESS, stage="initiated")
        else:
            status = state.status if state is not None else None
            item.update(status=job_status(status), executionStatus=status)
        return item

    async def batch(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        workflow_id = required_str(body, "workflowId")
        jobs = body.get("jobs")
        if not isinstance(jobs, list) or not jobs:
            raise fail(400, "jobs is required: a non-empty array of {title, description, jobPayloadSchemaInstance}")
        limit = self.ctx.settings.job_batch_limit
        if len(jobs) > limit:
            raise fail(400, f"jobs has {len(jobs)} items; at most {limit} per batch")
        auth: KeyInfo = request[AUTH]
        self._payload_schema(workflow_id, auth.tenant)

        async def one(item: Any) -> dict[str, Any]:
            job_id = None
            try:
                if not isinstance(item, dict) or "jobPayloadSchemaInstance" not in item:
                    raise fail(400, "each job is an object with jobPayloadSchemaInstance")
                job_id = await self._initiate(
                    auth, workflow_id, str(item.get("title", "")), str(item.get("description", ""))
                )
                job = await load_job(self.ctx.log, job_id)
                assert job is not None
                await self._execute(job, item["jobPayloadSchemaInstance"])
                return {"success": True, "jobId": job_id}
            except web.HTTPException as exc:
                out: dict[str, Any] = {"success": False, "error": json.loads(exc.text or "{}").get("error", exc.reason)}
                if job_id:
                    out["jobId"] = job_id
                return out

        settled = await asyncio.gather(*(one(item) for item in jobs), return_exceptions=True)
        results = [
            r if isinstance(r, dict) else {"success": False, "error": f"{type(r).__name__}: {r}"} for r in settled
        ]
        ok = sum(1 for r in results if r["success"])
        return web.json_response(
            {"total": len(results), "successful": ok, "failed": len(results) - ok, "results": results}
        )


class InitiateBody(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /job/initiate``."""

    workflowId: str
    title: str = ""
    description: str = ""


class InitiatedBody(msgspec.Struct, frozen=True, kw_only=True):
    success: bool
    jobExecutionId: str


class ExecuteBody(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /job/execute``: the instance is checked against the workflow's jobPayloadSchema."""

    jobExecutionId: str
    jobPayloadSchemaInstance: dict[str, Any]


class ExecutedBody(msgspec.Struct, frozen=True, kw_only=True):
    success: bool
    message: str
    executionId: str


class BatchJob(msgspec.Struct, frozen=True, kw_only=True):
    jobPayloadSchemaInstance: dict[str, Any]
    title: str = ""
    description: str = ""


class BatchBody(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /job/batch``."""

    workflowId: str
    jobs: list[BatchJob]


class JobListed(msgspec.Struct, frozen=True, kw_only=True):
    """One job of ``GET /jobs``."""

    jobExecutionId: str
    workflowId: str
    title: str
    description: str
    owner: str
    """The client the job belongs to."""
    createdAt: str | None
    executionId: str | None
    """None until the job is executed."""
    status: str
    """IN PROGRESS, COMPLETED or FAILED."""
    executionStatus: str | None = None
    stage: str | None = None
    """``initiated`` for a job not executed yet."""


class JobList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /jobs``: the caller's jobs, newest first (an admin: every client's)."""

    jobs: list[JobListed]
    total: int
    limit: int
    offset: int


JOB_API = web.AppKey("nexus.workflow.job_api", JobApi)
"""The job routes' handler, for the modules that start jobs themselves (anomalies)."""


def install(service: Service, ctx: WorkflowContext) -> None:
    """Add the job routes (and the stream tokens their monitor takes) to the workflow service."""
    api = JobApi(ctx, install_stream_tokens(service, ctx))
    service.app[JOB_API] = api

    async def follow_jobs(app: web.Application) -> AsyncIterator[None]:
        # Loaded before the service answers, then kept current from the log (every replica's jobs).
        await api.index.load()
        task = asyncio.create_task(api.index.follow(), name="workflow-jobs")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    service.app.cleanup_ctx.append(follow_jobs)
    route = functools.partial(
        service.route, auth="client", tags=["jobs (seed 000)"], error_shape=seed_error, error_model=SeedError
    )
    owned_job = Owned("job", "id", api.tenant_of)
    route(
        "GET",
        "/workflow/{workflowId}",
        summary="A workflow and its jobPayloadSchema (the type of each field)",
        responses={404: "No such workflow", 400: "The workflow's input schema cannot be a job payload"},
    )(api.get_workflow)
    route(
        "POST",
        "/job/initiate",
        summary="Start a job for a workflow: answers its jobExecutionId",
        request=InitiateBody,
        response=InitiatedBody,
        responses={404: "No such workflow"},
    )(api.initiate)
    route(
        "POST",
        "/job/execute",
        summary="Execute an initiated job with its payload (idempotent per job)",
        request=ExecuteBody,
        response=ExecutedBody,
        responses={404: "No such job", 409: "The workflow is inactive or gone"},
    )(api.execute)
    route(
        "POST",
        "/job/batch",
        summary="Initiate and execute many jobs of one workflow",
        request=BatchBody,
        responses={404: "No such workflow"},
    )(api.batch)
    route(
        "GET",
        "/jobs",
        summary="The caller's jobs, newest first (an admin: every client's); not in seed 000",
        response=JobList,
        query={"limit": "1-1000 (default 50)", "offset": "how many to skip (default 0)"},
        responses={400: "A bad limit or offset"},
    )(api.list_jobs)
    route("GET", "/job/{id}/status", summary="A job's status", owned=owned_job)(api.status)
    route(
        "GET",
        "/job/{id}/results",
        summary="A finished job's results",
        owned=owned_job,
        responses={409: "The job is still in progress"},
    )(api.results)
    route("GET", "/job/{id}/audit", summary="A job's audit trail, from the event log", owned=owned_job)(api.audit)
    stream_query = {"access_token": "a stream token (POST /job/{id}/monitor/token), for a browser's EventSource"}
    route(
        "GET",
        "/job/{id}/monitor",
        summary="Server-Sent Events: the job's status at each change, until a final one",
        owned=owned_job,
        content_type="text/event-stream",
        query=stream_query,
    )(api.monitor)
    route(
        "GET",
        "/api/opus/job/{id}/monitor",
        summary="The job's monitor at seed 000's path (same stream as /job/{id}/monitor)",
        owned=owned_job,
        content_type="text/event-stream",
        query=stream_query,
    )(api.monitor)
    route(
        "POST",
        "/job/{id}/monitor/token",
        summary="A token of a few minutes that opens this job's monitor as ?access_token= (browsers)",
        owned=owned_job,
        response=StreamTokenGranted,
        status=201,
        responses={403: "A delegated token cannot mint one"},
    )(api.monitor_token)
