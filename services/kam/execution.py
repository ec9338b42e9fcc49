"""KAM's execution of requests: starting a template's workflow, learning that it ended, recording the outcome.

``POST /api/requests/{id}/execute`` (admin) sends ``nexus.cmd.workflow.start`` with the seed's
body as the execution's input and the request's client in ``Nexus-Tenant``: the execution is the
client's (it can follow it on the workflow service; nobody else can), KAM appears only as the
command's source. The idempotency key ``kam:<request>:<attempt>`` makes a retried command start
one execution.

KAM learns that an execution ended from the log (``ExecutionWatcher``, a follower of the fold),
never by polling: it reads the execution's own stream, computes the metrics and the costs,
stores the output in Raw as the deliverable, and appends the ledger entries and the request's
``completed`` or ``failed``. Every id it writes is derived from the execution id, and the
request's transition is appended at the version the request had, so two replicas (or one that
restarted half-way) record each outcome once: the second writer meets a duplicate or a
ConcurrencyError and stops. At start, requests still ``executing`` are checked against their
execution's stream, so an execution that ended while KAM was down is recorded then.

``POST /api/worker-sessions/{execution_id}/complete`` takes the same outcome from an external
orchestrator (seed 002, phase 8), idempotently.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import mimetypes
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.bus import BusError
from nexus.eventlog import ConcurrencyError, DuplicateEventError
from nexus.proto import CMD_PREFIX, CloudEvent, cmd_subject, encode_event, new_event, now_rfc3339, parse_rfc3339
from nexus.proto.commands import TENANT_HEADER, WorkflowStartCommand
from nexus.proto.events.kam import (
    KamCostRecorded,
    KamDeliverableRecorded,
    KamRequestCompleted,
    KamRequestExecuting,
    KamRequestFailed,
)
from nexus.raw import REF_SCHEME, RawError, RawKeyError, RawNotFoundError, is_ref, key_tenant, ref_key, tenant_key
from nexus.runtime import HTTPError, Owned, json_response, read_json
from nexus.services.kam.context import KamContext
from nexus.services.kam.costs import CostModel, Usage, price, total
from nexus.services.kam.state import (
    COST_RECORDED,
    DELIVERABLE_RECORDED,
    LEDGER_STREAM,
    REQUEST_COMPLETED,
    REQUEST_EXECUTING,
    REQUEST_FAILED,
    Request,
    request_stream,
)

__all__ = [
    "START_TIMEOUT_SECONDS",
    "TERMINAL",
    "Completion",
    "ExecuteBody",
    "ExecutionRoutes",
    "ExecutionWatcher",
    "Outcome",
    "Started",
    "WorkerCompletion",
    "encode_output",
    "install",
    "measure",
    "record_outcome",
    "stable_id",
    "tokens_of",
]

logger = logging.getLogger("nexus.kam.execution")

START_TIMEOUT_SECONDS = 10.0
"""How long ``execute`` waits for the workflow service to answer the start command (then 503)."""

TERMINAL: Mapping[str, str] = {
    "nexus.workflow.execution.completed": "completed",
    "nexus.workflow.execution.failed": "failed",
    "nexus.workflow.execution.compensated": "failed",
    "nexus.workflow.execution.cancelled": "failed",
    "nexus.workflow.execution.timed_out": "failed",
}
"""The events that end an execution, and what they make of the request."""

STEP_COMPLETED = "nexus.workflow.step.completed"
EXECUTION_STREAM = "execution-"
"""The workflow service's stream of one execution is ``execution-<id>`` (ARCHITECTURE, Log streams)."""

DEFAULT_RESOURCES = {"max_workers": 5, "timeout_ms": 300_000}
"""The seed's resources, when the template names none."""

_IDS = uuid.UUID("ec4acd95-fe99-4bd4-adcd-4f4ddad992ce")
_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
_WORKERS = 4
_CONFLICT_ROUNDS = 3


def stable_id(execution_id: str, *parts: str) -> str:
    """An event id derived from the execution and what the event records: every replica (and a
    restarted KAM) writes the same id for the same fact, so the log keeps it once."""
    return str(uuid.uuid5(_IDS, "\x00".join((execution_id, *parts))))


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


class WorkerDeliverable(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One deliverable an orchestrator stored in Raw."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    storage_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=1100)]
    """``raw://<key>`` in the request's client's namespace (``t/<client>/…``), already stored."""
    size_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    metadata: dict[str, Any] = {}
    content_type: str | None = None
    """Default: the content type Raw stored it with."""


class WorkerMetrics(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The orchestrator's figures of the run (seed 002, phase 8)."""

    total_time_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    stages_completed: Annotated[int, msgspec.Meta(ge=0)] = 0
    tokens_used: Annotated[int, msgspec.Meta(ge=0)] = 0
    estimated_cost: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class WorkerCompletion(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/worker-sessions/{execution_id}/complete``: the seed's completion body."""

    execution_id: str
    status: Literal["completed", "failed"]
    deliverables: Annotated[list[WorkerDeliverable], msgspec.Meta(max_length=100)] = []
    metrics: WorkerMetrics = WorkerMetrics()
    error: Annotated[str, msgspec.Meta(max_length=4000)] = ""
    """Why it failed (``status: failed``)."""


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """What KAM recorded for an execution's end."""

    execution_id: str
    request_id: str
    status: str
    deliverable_ids: list[str]
    metrics: dict[str, Any]


# -- measuring an execution -------------------------------------------------------------------


def _count(value: Any) -> int | None:
    """A non-negative whole count, or None when ``value`` is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _words(value: Any) -> int:
    """Words in the text of a step's output (every string but ``raw://`` references)."""
    if isinstance(value, str):
        return 0 if is_ref(value) else len(value.split())
    if isinstance(value, Mapping):
        return sum(_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    return 0


def tokens_of(output: Any) -> tuple[int, bool]:
    """The tokens one step used, and whether the number is an estimate.

    Reported: the output's ``tokens_used``, or ``usage.total_tokens`` (OpenAI's shape). Else
    estimated as words × 4/3 (about 0.75 words per token in English), from ``word_count`` when
    the step gives it, else from the words of its text.
    """
    if isinstance(output, Mapping):
        reported = _count(output.get("tokens_used"))
        if reported is not None:
            return reported, False
        usage = output.get("usage")
        if isinstance(usage, Mapping):
            reported = _count(usage.get("total_tokens"))
            if reported is not None:
                return reported, False
        words = _count(output.get("word_count"))
        if words is None:
            words = _words(output)
    else:
        words = _words(output)
    return (math.ceil(words * 4 / 3), True) if words else (0, False)


def measure(events: Sequence[CloudEvent], end: CloudEvent) -> tuple[Usage, dict[str, Any]]:
    """The metrics of an execution from its own stream: time from its first event (queued) to
    ``end``, the steps completed (compensations not counted), the tokens their outputs used."""
    outputs: dict[str, Any] = {}
    for event in events:
        data = event.data if isinstance(event.data, Mapping) else {}
        if event.type == STEP_COMPLETED and not data.get("compensation"):
            outputs[str(data.get("step_id"))] = data.get("output")
    tokens, estimated = 0, False
    for output in outputs.values():
        used, guessed = tokens_of(output)
        tokens += used
        estimated = estimated or guessed
    elapsed = 0
    if events and events[0].time and end.time:
        elapsed = max(0, round((parse_rfc3339(end.time) - parse_rfc3339(events[0].time)).total_seconds() * 1000))
    metrics: dict[str, Any] = {
        "total_time_ms": elapsed,
        "stages_completed": len(outputs),
        "tokens_used": tokens,
    }
    if estimated:
        metrics["tokens_estimated"] = True
    return Usage(stages=len(outputs), tokens=tokens), metrics


# -- recording an outcome ---------------------------------------------------------------------


@dataclass
class NewDeliverable:
    """A deliverable about to be recorded."""

    deliverable_id: str
    type: str
    storage_ref: str
    size_bytes: int
    content_type: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """How an execution ended, as KAM records it (from its events or from an orchestrator)."""

    execution_id: str
    status: str
    """``completed`` or ``failed``."""
    event_id: str
    """The id of the request's ``completed``/``failed`` event (derived, so it is written once)."""
    metrics: dict[str, Any]
    costs: list[tuple[str, float, float]]
    currency: str
    at: str
    """RFC 3339: when the execution ended (the ledger entries' time)."""
    error: str = ""
    deliverables: list[NewDeliverable] = field(default_factory=list)


async def record_outcome(ctx: KamContext, request: Request, outcome: Outcome) -> bool:
    """Append the ledger entries, the deliverables and the request's transition, exactly once.

    The ledger entries go first, under ids derived from the execution and the cost kind: if
    KAM stops before the transition, the next attempt writes the same entries again, which the
    log keeps once. The transition is appended at the version the request had when it was
    read; a writer that lost the race gets ConcurrencyError (or a duplicate) and the answer
    False, having added nothing.
    """
    client = request.client_id
    template_id = request.template_id
    eid = outcome.execution_id
    source = ctx.source
    ledger = [
        new_event(
            COST_RECORDED,
            KamCostRecorded(
                entry_id=stable_id(eid, "cost", kind),
                client_id=client,
                amount=amount,
                currency=outcome.currency,
                kind=kind,
                quantity=quantity,
                request_id=request.request_id,
                execution_id=eid,
                template_id=template_id,
                at=outcome.at,
            ),
            source=source,
            id=stable_id(eid, "cost", kind),
            subject=request.request_id,
            correlationid=request.request_id,
            tenant=client,
        )
        for kind, quantity, amount in outcome.costs
    ]
    if ledger:
        try:
            await ctx.service.log.append(LEDGER_STREAM, ledger)
        except DuplicateEventError:
            pass  # written by another replica, or before a restart: the log keeps the first
    events = [
        new_event(
            DELIVERABLE_RECORDED,
            KamDeliverableRecorded(
                deliverable_id=item.deliverable_id,
                request_id=request.request_id,
                client_id=client,
                execution_id=eid,
                type=item.type,
                storage_ref=item.storage_ref,
                size_bytes=item.size_bytes,
                content_type=item.content_type,
                metadata=item.metadata,
            ),
            source=source,
            id=item.deliverable_id,
            subject=request.request_id,
            correlationid=request.request_id,
            tenant=client,
        )
        for item in outcome.deliverables
    ]
    final: Any
    if outcome.status == "completed":
        final = KamRequestCompleted(
            request_id=request.request_id,
            execution_id=eid,
            metrics=outcome.metrics,
            deliverable_ids=[item.deliverable_id for item in outcome.deliverables],
        )
    else:
        final = KamRequestFailed(
            request_id=request.request_id, execution_id=eid, error=outcome.error, metrics=outcome.metrics
        )
    events.append(
        new_event(
            REQUEST_COMPLETED if outcome.status == "completed" else REQUEST_FAILED,
            final,
            source=source,
            id=outcome.event_id,
            subject=request.request_id,
            correlationid=request.request_id,
            tenant=client,
        )
    )
    try:
        await ctx.append(request_stream(request.request_id), events, expected_version=request.version)
    except (ConcurrencyError, DuplicateEventError):
        return False
    return True


def _find_refs(value: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """Every ``raw://`` reference in an output, with the path it was found at."""
    if is_ref(value):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _find_refs(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _find_refs(item, f"{path}[{index}]")


_EXTENSIONS = {"application/json": ".json", "text/markdown": ".md", "text/plain": ".txt", "text/html": ".html"}


def _is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def encode_output(output: Any, content_type: str) -> tuple[bytes, str]:
    """The deliverable's bytes and content type: JSON for a JSON type; for a text type, the output
    when it is a string, or its ``text`` / ``content`` / ``markdown``; JSON otherwise."""
    if not _is_json(content_type):
        text = output if isinstance(output, str) else None
        if text is None and isinstance(output, Mapping):
            text = next((output[k] for k in ("text", "content", "markdown") if isinstance(output.get(k), str)), None)
        if text is not None:
            return text.encode(), content_type
        content_type = "application/json"
    return msgspec.json.encode(output), content_type


def _extension(content_type: str) -> str:
    base = content_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(base) or mimetypes.guess_extension(base) or ".bin"


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
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retries: set[asyncio.TimerHandle] = set()

    def observe(self, event: CloudEvent) -> None:
        """Follower of the fold: an execution KAM started has ended (or may have)."""
        if event.type not in TERMINAL:
            return
        data = event.data if isinstance(event.data, Mapping) else {}
        execution_id = str(data.get("execution_id") or (event.streamid or "").removeprefix(EXECUTION_STREAM))
        if execution_id in self.ctx.state.by_execution:
            self.check(execution_id)

    def check(self, execution_id: str) -> None:
        """Queue ``execution_id`` to be settled (once, however often it is asked)."""
        if execution_id in self._running:
            self._again.add(execution_id)
        elif execution_id not in self._queued:
            self._queued.add(execution_id)
            self._queue.put_nowait(execution_id)

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
        workers = [asyncio.create_task(self._work(), name=f"kam-watcher-{i}") for i in range(_WORKERS)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            for handle in self._retries:
                handle.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            execution_id = await self._queue.get()
            self._queued.discard(execution_id)
            self._running.add(execution_id)
            try:
                await self.settle(execution_id)
                self._failures.pop(execution_id, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(execution_id, 0)
                self._failures[execution_id] = failures + 1
                delay = _RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)]
                logger.exception("recording the end of execution %s failed; again in %g s", execution_id, delay)
                self._retry_later(execution_id, delay)
            finally:
                self._running.discard(execution_id)
                if execution_id in self._again:
                    self._again.discard(execution_id)
                    self.check(execution_id)

    def _retry_later(self, execution_id: str, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._retries.discard(handle)
            self.check(execution_id)

        handle = loop.call_later(delay, again)
        self._retries.add(handle)

    async def settle(self, execution_id: str) -> bool:
        """Record how ``execution_id`` ended, if it has and nobody recorded it yet; True when this call did."""
        ctx = self.ctx
        for _ in range(_CONFLICT_ROUNDS):
            request = self._executing(execution_id)
            if request is None:
                return False
            events = await ctx.service.log.read_stream(EXECUTION_STREAM + execution_id)
            end = next((e for e in reversed(events) if e.type in TERMINAL), None)
            if end is None:
                return False
            if events[0].tenant not in (None, request.client_id):
                logger.error("execution %s is not owned by client %s; not recorded", execution_id, request.client_id)
                return False
            outcome = await self._outcome(request, events, end)
            if await record_outcome(ctx, request, outcome):
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
            outcome.deliverables = await self._deliverables(request, template, outcome.execution_id, data.get("output"))
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
        key = tenant_key(client, "kam", "deliverables", request.request_id, execution_id + _extension(content_type))
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
        for path, ref in _find_refs(output):
            if ref in seen:
                continue
            seen.add(ref)
            try:
                ref_stat = await raw.stat(_client_key(ref, client))
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


def _client_key(ref: str, client: str) -> str:
    """The Raw key of ``ref`` when it lies in ``client``'s namespace.

    Raises:
        RawKeyError: not a reference, or one outside the client's namespace (a deliverable may
            never name another tenant's or the platform's blobs).
    """
    key = ref_key(ref)
    if key_tenant(key) != client:
        raise RawKeyError(f"{ref} is outside client {client!r}'s namespace")
    return key


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
    """The handlers of ``execute`` and of the orchestrator's completion."""

    def __init__(self, ctx: KamContext, watcher: ExecutionWatcher) -> None:
        self.ctx = ctx
        self.watcher = watcher

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
        execution_id = await self._start(item, workflow_id, execution_input, attempt)
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
        # A quick execution may have ended before the request said it executes (its end was
        # then not yet KAM's to watch): look at its stream once now.
        self.watcher.check(execution_id)
        answer = Started(execution_id=execution_id, request_id=request_id, workflow_id=workflow_id, attempt=attempt)
        return json_response(answer, status=202)

    async def _start(self, item: Request, workflow_id: str, execution_input: Any, attempt: int) -> str:
        """Send ``nexus.cmd.workflow.start`` for the request's client; the execution id."""
        command = WorkflowStartCommand(
            workflow_id=workflow_id,
            input=execution_input,
            idempotency_key=f"kam:{item.request_id}:{attempt}",
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

    async def complete(self, request: web.Request) -> web.Response:
        """An external orchestrator reports how an execution KAM started ended (seed 002, phase 8).
        The same body again answers the same and records nothing; another body for an execution
        that already ended is 409. Deliverables must be ``raw://`` references already stored in
        the client's namespace; the costs are priced with the template's cost model (the
        orchestrator's own estimate is kept as ``reported_cost``)."""
        execution_id = request.match_info["execution_id"]
        body = await read_json(request, WorkerCompletion)
        if body.execution_id != execution_id:
            raise HTTPError(400, f"execution_id {body.execution_id!r} in the body is not the path's {execution_id!r}")
        state = self.ctx.state
        request_id = state.by_execution.get(execution_id)
        if request_id is None:
            raise HTTPError(404, f"no execution {execution_id!r} started by KAM")
        digest = hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()
        event_id = stable_id(execution_id, "worker", digest)
        item = state.requests[request_id]
        settled = self._settled(item, execution_id, event_id)
        if settled is not None:
            return json_response(settled)
        if item.execution_id != execution_id or item.status != "executing":
            raise HTTPError(409, f"execution {execution_id} of request {request_id} already ended ({item.status})")
        outcome = await self._reported(item, body, event_id, self.ctx.actor(request[AUTH]))
        if not await record_outcome(self.ctx, item, outcome):
            await self.ctx.caught_up(await self.ctx.service.log.head())
            settled = self._settled(state.requests[request_id], execution_id, event_id)
            if settled is None:
                raise HTTPError(409, f"execution {execution_id} of request {request_id} ended meanwhile")
            return json_response(settled)
        answer = self._settled(state.requests[request_id], execution_id, event_id)
        assert answer is not None  # the fold has the transition: ctx.append waits for it
        return json_response(answer)

    def _settled(self, item: Request, execution_id: str, event_id: str) -> Completion | None:
        """The answer when the transition ``event_id`` is recorded, else None (409 when another one is)."""
        entry = next((h for h in item.history if h.get("event_id") == event_id), None)
        if entry is None:
            if item.execution_id == execution_id and item.status in ("completed", "failed"):
                raise HTTPError(
                    409, f"execution {execution_id} already ended ({item.status}) with other results than these"
                )
            return None
        deliverables = self.ctx.state.deliverables
        return Completion(
            execution_id=execution_id,
            request_id=item.request_id,
            status=str(entry["status"]),
            deliverable_ids=[d for d in item.deliverable_ids if deliverables[d].execution_id == execution_id],
            metrics=item.metrics if item.execution_id == execution_id else {},
        )

    async def _reported(self, item: Request, body: WorkerCompletion, event_id: str, actor: str) -> Outcome:
        raw = self.ctx.service.raw
        deliverables: list[NewDeliverable] = []
        for index, reported in enumerate(body.deliverables):
            where = f"deliverables[{index}].storage_ref"
            try:
                stat = await raw.stat(_client_key(reported.storage_ref, item.client_id))
            except RawKeyError as exc:
                raise HTTPError(400, f"{where}: {exc}; store deliverables under t/{item.client_id}/") from None
            except RawNotFoundError:
                raise HTTPError(400, f"{where}: nothing is stored at {reported.storage_ref}") from None
            except RawError as exc:
                raise HTTPError(503, f"{where}: Raw cannot be read now ({exc})") from None
            deliverables.append(
                NewDeliverable(
                    deliverable_id=stable_id(body.execution_id, "worker-deliverable", str(index), reported.storage_ref),
                    type=reported.type,
                    storage_ref=reported.storage_ref,
                    size_bytes=stat.size,
                    content_type=reported.content_type or stat.content_type,
                    metadata={
                        **reported.metadata,
                        "execution_id": body.execution_id,
                        "template_id": item.template_id,
                        "reported_size_bytes": reported.size_bytes,
                        "source": "worker_session",
                    },
                )
            )
        template = self.ctx.state.templates.get(item.template_id or "") or {}
        model = CostModel.of(template)
        figures = body.metrics
        costs = price(model, Usage(stages=figures.stages_completed, tokens=figures.tokens_used))
        metrics: dict[str, Any] = {
            **msgspec.to_builtins(figures),
            "estimated_cost": total(amount for _, _, amount in costs),
            "reported_cost": figures.estimated_cost,
            "currency": model.currency,
            "reported_by": actor,
        }
        return Outcome(
            execution_id=body.execution_id,
            status=body.status,
            event_id=event_id,
            metrics=metrics,
            costs=costs,
            currency=model.currency,
            at=now_rfc3339(),
            error=body.error or ("the orchestrator reported a failure" if body.status == "failed" else ""),
            deliverables=deliverables if body.status == "completed" else [],
        )


def _resources(template: Mapping[str, Any]) -> dict[str, Any]:
    resources = template.get("resources")
    if not isinstance(resources, Mapping):
        return {}
    return {k: resources[k] for k in ("max_workers", "timeout_ms") if _count(resources.get(k))}


def install(ctx: KamContext) -> ExecutionWatcher:
    """Add ``execute`` and the orchestrator's completion to KAM, and start watching executions."""
    watcher = ExecutionWatcher(ctx)
    routes = ExecutionRoutes(ctx, watcher)
    ctx.on_event(watcher.observe)

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
    ctx.route(
        "POST",
        "/worker-sessions/{execution_id}/complete",
        summary="An orchestrator reports how an execution ended (worker token)",
        request=WorkerCompletion,
        response=Completion,
        responses={
            400: "The body is not understood, or a deliverable is not stored in the client's namespace",
            404: "KAM started no such execution",
            409: "The execution already ended with other results",
        },
        tags=["execution"],
        auth="worker",
    )(routes.complete)
    return watcher
