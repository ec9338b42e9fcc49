"""KAM's execution of requests: starting a template's workflow, learning that it ended, recording the outcome.

``POST /api/requests/{id}/execute`` (admin) sends ``nexus.cmd.workflow.start`` with the seed's
body as the execution's input and the request's client in ``Nexus-Tenant``: the execution is the
client's (it can follow it on the workflow service; nobody else can), KAM appears only as the
command's source. The idempotency key ``kam:<request>:<attempt>:v<request version>`` makes a
retried command start one execution, and a retry after the request changed start the run the
request now describes.

KAM learns that an execution ended from the log (``ExecutionWatcher``, a follower of the fold),
never by polling: it reads the execution's own stream, computes the metrics and the costs,
stores the output in Raw as the deliverable, and appends the ledger entries and the request's
``completed`` or ``failed``. Every id it writes is derived from the execution id, and the
request's transition is appended at the version the request had, so two replicas (or one that
restarted half-way) record each outcome once: the second writer meets a duplicate or a
ConcurrencyError and stops. At start, requests still ``executing`` are checked against their
execution's stream, so an execution that ended while KAM was down is recorded then.

What is recorded, and how it is kept to once, is ``outcomes``; an external orchestrator reports
an end through ``worker_sessions``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.bus import BusError
from nexus.eventlog import ConcurrencyError, DuplicateEventError
from nexus.proto import CMD_PREFIX, CloudEvent, cmd_subject, encode_event, new_event, now_rfc3339
from nexus.proto.commands import TENANT_HEADER, WorkflowStartCommand
from nexus.proto.events.kam import KamRequestExecuting
from nexus.raw import REF_SCHEME, RawKeyError, RawNotFoundError, RawQuotaError, tenant_key
from nexus.runtime import HTTPError, KeyedWork, Owned, json_response, read_json
from nexus.services.kam.context import KamContext
from nexus.services.kam.costs import CostModel, price, total
from nexus.services.kam.outcomes import (
    EXECUTION_STREAM,
    TERMINAL,
    NewDeliverable,
    Outcome,
    client_key,
    encode_output,
    extension,
    find_refs,
    measure,
    record_outcome,
    stable_id,
)
from nexus.services.kam.state import REQUEST_EXECUTING, Request, request_stream

__all__ = [
    "DEFAULT_RESOURCES",
    "START_TIMEOUT_SECONDS",
    "ExecuteBody",
    "ExecutionRoutes",
    "ExecutionWatcher",
    "Started",
    "install",
]

logger = logging.getLogger("nexus.kam.execution")

START_TIMEOUT_SECONDS = 10.0
"""How long ``execute`` waits for the workflow service to answer the start command (then 503)."""

DEFAULT_RESOURCES = {"max_workers": 5, "timeout_ms": 300_000}
"""The seed's resources, when the template names none."""

_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
_WORKERS = 4
_CONFLICT_ROUNDS = 3


# -- bodies and answers -----------------------------------------------------------------------


class Resources(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resources of the run, each overriding the template's."""

    max_workers: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    timeout_ms: Annotated[int, msgspec.Meta(ge=1000, le=86_400_000)] | None = None


class ExecuteBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/requests/{id}/execute``: an empty object, or resources overriding the template's."""

    resources: Resources | None = None


class Started(msgspec.Struct, frozen=True, kw_only=True):
    """The execution started for the request."""

    execution_id: str
    request_id: str
    status: str = "executing"
    workflow_id: str
    attempt: int


# -- the watcher ------------------------------------------------------------------------------


class ExecutionWatcher:
    """Records the end of every execution KAM started, once, from the log.

    ``observe`` is a follower of KAM's fold (``ctx.on_event``): an event ending an execution
    named in ``state.by_execution`` queues its id. ``run`` (a background task) first queues every
    request still ``executing`` (its execution may have ended while KAM was down, before the
    state was loaded), then settles queued executions with a few workers. Settling reads the
    execution's stream, so a check that comes early does nothing and a late one still finds
    the end.
    """

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx
        self._work = KeyedWork(
            self.settle,
            name="kam-watcher",
            what="recording the end of execution",
            workers=_WORKERS,
            retry_seconds=_RETRY_SECONDS,
        )

    def observe(self, event: CloudEvent) -> None:
        """Follower of the fold: an execution KAM started has ended, or a request began executing.

        The second, because a quick execution may end before its request says it executes
        (the end is then in the log before ``by_execution`` names the execution): its stream is
        read once the request's ``executing`` is folded, on every replica."""
        if event.type != REQUEST_EXECUTING and event.type not in TERMINAL:
            return
        data = event.data if isinstance(event.data, Mapping) else {}
        execution_id = str(data.get("execution_id") or (event.streamid or "").removeprefix(EXECUTION_STREAM))
        if execution_id in self.ctx.state.by_execution:
            self.check(execution_id)

    def check(self, execution_id: str) -> None:
        """Queue ``execution_id`` to be settled (once, however often it is asked)."""
        self._work.check(execution_id)

    def sweep(self) -> int:
        """Queue the execution of every request still ``executing``; answers how many."""
        executing = [
            r.execution_id for r in self.ctx.state.requests.values() if r.status == "executing" and r.execution_id
        ]
        for execution_id in executing:
            self.check(execution_id)
        return len(executing)

    async def run(self) -> None:
        """Sweep, then settle queued executions until cancelled."""
        swept = self.sweep()
        if swept:
            logger.info("checking %d executions of requests still executing", swept)
        await self._work.run()

    async def settle(self, execution_id: str) -> bool:
        """Record how ``execution_id`` ended, if it has and nobody recorded it yet; True when this call did."""
        ctx = self.ctx
        for _ in range(_CONFLICT_ROUNDS):
            request = self._executing(execution_id)
            if request is None:
                return False
            version = request.version  # before anything is awaited: the fold's request moves on
            events = await ctx.service.log.read_stream(EXECUTION_STREAM + execution_id)
            end = next((e for e in reversed(events) if e.type in TERMINAL), None)
            if end is None:
                return False
            if events[0].tenant not in (None, request.client_id):
                logger.error("execution %s is not owned by client %s; not recorded", execution_id, request.client_id)
                return False
            outcome = await self._outcome(request, events, end)
            if await record_outcome(ctx, request, outcome, version):
                return True
            # Another writer got there first, or this replica's fold was behind the request's
            # stream: catch up and look again (the ids are derived, so trying again is safe).
            await ctx.caught_up(await ctx.service.log.head())
        return False

    def _executing(self, execution_id: str) -> Request | None:
        state = self.ctx.state
        request_id = state.by_execution.get(execution_id)
        request = state.requests.get(request_id) if request_id else None
        if request is None or request.status != "executing" or request.execution_id != execution_id:
            return None
        return request

    async def _outcome(self, request: Request, events: Sequence[CloudEvent], end: CloudEvent) -> Outcome:
        template = self.ctx.state.templates.get(request.template_id or "") or {}
        usage, metrics = measure(events, end)
        model = CostModel.of(template)
        costs = price(model, usage)
        metrics["estimated_cost"] = total(amount for _, _, amount in costs)
        metrics["currency"] = model.currency
        status = TERMINAL[end.type]
        data = end.data if isinstance(end.data, Mapping) else {}
        execution_id = str(request.execution_id)
        outcome = Outcome(
            execution_id=execution_id,
            status=status,
            event_id=stable_id(execution_id, "request", status),
            metrics=metrics,
            costs=costs,
            currency=model.currency,
            at=end.time or now_rfc3339(),
        )
        if status == "completed":
            try:
                outcome.deliverables = await self._deliverables(
                    request, template, outcome.execution_id, data.get("output")
                )
            except (RawQuotaError, RawKeyError) as exc:
                # Trying again would not help (RawUnavailableError, which might, is raised on):
                # the run is over, its result cannot be kept, and the request must say so.
                outcome.status = "failed"
                outcome.event_id = stable_id(outcome.execution_id, "request", "failed")
                outcome.error = f"the execution completed but its output could not be stored in Raw: {exc}"
        else:
            kind = end.type.rsplit(".", 1)[-1]
            reason = str(data.get("error") or data.get("reason") or "")
            outcome.error = f"execution {kind}: {reason}" if reason else f"execution {kind}"
        return outcome

    async def _deliverables(
        self, request: Request, template: Mapping[str, Any], execution_id: str, output: Any
    ) -> list[NewDeliverable]:
        """Store the output in the client's Raw namespace; add the references it names there."""
        raw = self.ctx.service.raw
        client = request.client_id
        declared = template.get("deliverable")
        spec: Mapping[str, Any] = declared if isinstance(declared, Mapping) else {}
        kind = str(spec.get("type") or "json")
        body, content_type = encode_output(output, str(spec.get("content_type") or "application/json"))
        key = tenant_key(client, "kam", "deliverables", request.request_id, execution_id + extension(content_type))
        stat = await raw.store(key, body, content_type)
        common = {
            "workflow_id": request.workflow_id,
            "template_id": request.template_id,
            "template_name": request.template_name,
            "execution_id": execution_id,
        }
        main = NewDeliverable(
            deliverable_id=stable_id(execution_id, "deliverable", "output"),
            type=kind,
            storage_ref=REF_SCHEME + key,
            size_bytes=len(body),
            content_type=content_type,
            metadata={**common, "sha256": stat.sha256, "source": "execution_output"},
        )
        found = [main]
        skipped: list[dict[str, str]] = []
        seen: set[str] = set()
        for path, ref in find_refs(output):
            if ref in seen:
                continue
            seen.add(ref)
            try:
                ref_stat = await raw.stat(client_key(ref, client))
            except (RawKeyError, RawNotFoundError) as exc:
                skipped.append({"path": path, "storage_ref": ref, "reason": str(exc) or type(exc).__name__})
                continue
            found.append(
                NewDeliverable(
                    deliverable_id=stable_id(execution_id, "deliverable", ref),
                    type="artifact",
                    storage_ref=ref,
                    size_bytes=ref_stat.size,
                    content_type=ref_stat.content_type,
                    metadata={**common, "path": path, "sha256": ref_stat.sha256, "source": "output_reference"},
                )
            )
        if skipped:
            main.metadata["skipped_refs"] = skipped
        return found


# -- the routes -------------------------------------------------------------------------------


async def _optional_body(request: web.Request) -> ExecuteBody:
    """The execute body; an empty one means no overrides."""
    if not request.body_exists or request.content_length == 0:
        return ExecuteBody()
    raw = await request.read()
    if not raw.strip():
        return ExecuteBody()
    return await read_json(request, ExecuteBody)


def _defaults(template: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The request's parameters, with the template's defaults for the ones it leaves out."""
    schema = template.get("parameters")
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    filled = dict(parameters)
    if isinstance(properties, Mapping):
        for name, prop in properties.items():
            if name not in filled and isinstance(prop, Mapping) and "default" in prop:
                filled[name] = prop["default"]
    return filled


class ExecutionRoutes:
    """The handler of ``execute``."""

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx

    async def execute(self, request: web.Request) -> web.Response:
        """Starts the template's workflow for the request (seed 002, phase 4) with the seed's body as
        its input, owned by the request's client. 409 while it executes or once it completed (a
        failed request may run again: a new attempt); 503 when the workflow service does not
        answer in time (nothing recorded; executing again starts at most one execution)."""
        request_id = request.match_info["request_id"]
        body = await _optional_body(request)
        info: KeyInfo = request[AUTH]
        state = self.ctx.state
        item = state.requests[request_id]
        if item.status in ("executing", "completed"):
            raise HTTPError(409, f"request {request_id} is {item.status}; only a failed run may be executed again")
        if not item.template_id:
            raise HTTPError(
                409, f"request {request_id} has no template yet: assign one first (PUT /api/requests/{request_id})"
            )
        template = state.templates.get(item.template_id)
        if template is None:
            raise HTTPError(409, f"template {item.template_id!r} of request {request_id} is not registered")
        workflow_id = str(template.get("workflow_id") or "")
        if not workflow_id:
            raise HTTPError(409, f"template {item.template_id!r} names no workflow_id")
        attempt = item.attempts + 1
        version = item.version
        resources = {**DEFAULT_RESOURCES, **_resources(template)}
        if body.resources is not None:
            resources.update({k: v for k, v in msgspec.to_builtins(body.resources).items() if v is not None})
        execution_input = {
            "template": {
                "id": item.template_id,
                "name": str(template.get("name") or item.template_name or item.template_id),
                "stages": template.get("stages") or [],
            },
            "context": {
                "client_id": item.client_id,
                "request_id": request_id,
                "parameters": _defaults(template, item.parameters),
                "request": {
                    "title": item.title,
                    "description": item.description,
                    "urgency": item.urgency,
                    "category": item.category,
                },
            },
            "resources": resources,
        }
        # The key names the request's version too: a retry after the request changed (another
        # template assigned meanwhile) starts the run it now describes, never the old one.
        key = f"kam:{request_id}:{attempt}:v{version}"
        execution_id = await self._start(item, workflow_id, execution_input, key)
        started_by = self.ctx.actor(info)
        event = new_event(
            REQUEST_EXECUTING,
            KamRequestExecuting(
                request_id=request_id,
                execution_id=execution_id,
                workflow_id=workflow_id,
                attempt=attempt,
                started_by=started_by,
            ),
            source=self.ctx.source,
            id=stable_id(execution_id, "request", "executing"),
            subject=request_id,
            correlationid=request_id,
            tenant=item.client_id,
        )
        try:
            await self.ctx.append(request_stream(request_id), [event], expected_version=version)
        except (ConcurrencyError, DuplicateEventError):
            raise HTTPError(
                409, f"request {request_id} changed while it was being executed (two executes at once?); read it again"
            ) from None
        except TimeoutError:
            # Appended, but this replica's fold is more than 10 s behind: the request executes
            # all the same, and the watcher looks at the execution once the fold has the event.
            logger.warning("request %s executes; the fold lags behind the log", request_id)
        answer = Started(execution_id=execution_id, request_id=request_id, workflow_id=workflow_id, attempt=attempt)
        return json_response(answer, status=202)

    async def _start(self, item: Request, workflow_id: str, execution_input: Any, key: str) -> str:
        """Send ``nexus.cmd.workflow.start`` for the request's client; the execution id."""
        command = WorkflowStartCommand(
            workflow_id=workflow_id,
            input=execution_input,
            idempotency_key=key,
            correlation_id=item.request_id,
        )
        event = new_event(f"{CMD_PREFIX}.workflow.start", command, source=self.ctx.source, subject=item.request_id)
        try:
            reply = await self.ctx.service.bus.request(
                cmd_subject("workflow", "start"),
                encode_event(event),
                timeout=START_TIMEOUT_SECONDS,
                headers={TENANT_HEADER: item.client_id},
            )
        except BusError as exc:
            raise HTTPError(
                503,
                f"the workflow service did not answer within {START_TIMEOUT_SECONDS:g} s ({exc}); nothing was "
                "recorded; execute again (the same attempt starts at most one execution)",
                error="unavailable",
            ) from None
        try:
            answer = json.loads(reply)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise HTTPError(502, "the workflow service answered the start command with something that is not JSON")
        if answer.get("accepted") is False:
            reason = answer.get("reason") or answer.get("error") or "refused"
            raise HTTPError(422, f"the workflow service refused to start {workflow_id!r}: {reason}")
        execution_id = answer.get("id")
        if not isinstance(execution_id, str) or not execution_id:
            raise HTTPError(502, "the workflow service's answer to the start command names no execution")
        return execution_id


def _resources(template: Mapping[str, Any]) -> dict[str, Any]:
    resources = template.get("resources")
    if not isinstance(resources, Mapping):
        return {}
    return {
        name: value
        for name in ("max_workers", "timeout_ms")
        if isinstance(value := resources.get(name), int) and not isinstance(value, bool) and value > 0
    }


def install(ctx: KamContext) -> ExecutionWatcher:
    """Add ``execute`` to KAM, and watch the executions it starts."""
    watcher = ExecutionWatcher(ctx)
    routes = ExecutionRoutes(ctx)
    ctx.on_event(watcher.observe, types=TERMINAL)

    @ctx.service.background
    async def watch_executions(service: Any) -> None:
        await watcher.run()

    ctx.route(
        "POST",
        "/requests/{request_id}/execute",
        summary="Run the request's template on the workflow service (admin)",
        request=ExecuteBody,
        response=Started,
        status=202,
        responses={
            400: "The body is not understood",
            404: "No such request",
            409: "The request has no template, executes or completed already, or changed meanwhile",
            422: "The workflow service refused to start the template's workflow (the reason is given)",
            503: "The workflow service did not answer in time; nothing was recorded",
        },
        tags=["execution"],
        auth="client",
        scope="admin",
        owned=Owned("request", "request_id", ctx.state.tenant_of_request),
    )(routes.execute)
    return watcher
