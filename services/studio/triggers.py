"""Blob events start the providers' workflows (seed 004, "Workflow Execution Flow").

``Triggers.observe`` follows the studio's fold: a ``BlobCreated`` is an ``onCreate``, a
``BlobUpdated`` an ``onUpdate``, a ``BlobDeleted`` an ``onDelete``. For each provider reacting
to the blob's owner (``providers.visible_providers``) and each of its workflows with a trigger
of that event whose conditions hold of the blob (``providers.matches``), a start is queued;
a few workers send ``nexus.cmd.workflow.start`` with ``Nexus-Tenant`` = the blob's owner (the
execution is the client's, its steps act with the client's delegated token), the input
``{blob_id, user_id, provider_ids, metadata}`` (``user_id``: see ``user_id``) and the provider's priority, then append
``StudioRunStarted`` to ``run_stream(execution_id)``.

Each start happens once per (blob version, provider, workflow): the command's idempotency key
is derived from them, so a start sent twice (two replicas following the same event, a retry
after the bus timed out) names one execution, and the run's first event has a derived id and
is appended to a new stream only (``NO_STREAM``). The follower only queues (it must not wait
for appends, which wait for the fold it runs inside).

No loop: a write made by a run (its ``origin`` names the run) does not trigger the provider of
that run again, and a chain of runs writing blobs that trigger other providers stops at
``MAX_CHAIN`` runs deep (the depth is read from the origins, so it survives restarts); a run
calling ``POST /providers/trigger`` counts as the parent of the runs it starts, so a workflow
that triggers its own provider stops there too.

``POST /providers/trigger`` (called by seed 004's ``blob_processing_workflow``) starts the named
providers' workflows for a blob now, trigger ``manual``: every workflow of each provider, as
the seed's step asks providers to process the blob, whatever their triggers say.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from aiohttp import web
from opentelemetry import trace

from nexus.auth import AUTH, KeyInfo
from nexus.bus import BusError
from nexus.eventlog import NO_STREAM, ConcurrencyError, DuplicateEventError
from nexus.obs import current_traceparent, parent_context
from nexus.proto import CMD_PREFIX, CloudEvent, cmd_subject, encode_event, new_event
from nexus.proto.commands import TENANT_HEADER, WorkflowStartCommand
from nexus.proto.events.studio import BlobOrigin, StudioRunStarted
from nexus.runtime import HTTPError, json_response, read_json
from nexus.services.studio.context import StudioContext
from nexus.services.studio.providers import matches, trigger_document, visible_providers
from nexus.services.studio.state import (
    BLOB_CREATED,
    BLOB_DELETED,
    BLOB_UPDATED,
    RUN_STARTED,
    Blob,
    Provider,
    StudioState,
    run_stream,
)

__all__ = [
    "MAX_CHAIN",
    "START_TIMEOUT_SECONDS",
    "Start",
    "TriggerAnswer",
    "TriggerBody",
    "Triggers",
    "chain_depth",
    "effective_origin",
    "install",
    "run_depth",
    "stable_id",
    "user_id",
]

logger = logging.getLogger("nexus.studio.triggers")
_tracer = trace.get_tracer("nexus.studio.triggers")

MAX_CHAIN = 4
"""How many runs deep a chain of provider runs may go (a run's write triggering another provider,
whose run writes...): the write of a run at this depth triggers nothing."""

START_TIMEOUT_SECONDS = 10.0
_WORKERS = 8
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
_EVENT_OF = {BLOB_CREATED: "onCreate", BLOB_UPDATED: "onUpdate", BLOB_DELETED: "onDelete"}
_IDS = uuid.UUID("5f0c2f61-3c55-4f33-9c0e-0b6a3c1d7e21")


def stable_id(*parts: str) -> str:
    """An id derived from what it names: every replica (and a restarted studio) derives the same."""
    return str(uuid.uuid5(_IDS, "\x00".join(parts)))


WRITTEN_BY_EXECUTION = "execution:"
"""How the blob routes name a writer acting with a workflow step's delegated token (``execution:<id>``)."""


def effective_origin(state: StudioState, origin: BlobOrigin | None, by: str) -> BlobOrigin | None:
    """The run behind a write: its ``origin`` when the transformer wrote it, else the run whose
    execution's step wrote it through the blob routes (``by`` = ``execution:<id>``, the step
    given as ``api``); None for a client's own write or an execution that is no provider run."""
    if origin is not None:
        return origin
    if not by.startswith(WRITTEN_BY_EXECUTION):
        return None
    run = state.runs.get(by.removeprefix(WRITTEN_BY_EXECUTION))
    if run is None:
        return None
    return BlobOrigin(
        provider_id=run.provider_id, workflow_id=run.workflow_id, execution_id=run.execution_id, step="api"
    )


def run_depth(state: StudioState, execution_id: str) -> int:
    """How many provider runs deep run ``execution_id`` is: 1 for a run started by a client's
    write, one more for each run whose write (or whose ``POST /providers/trigger``) started the
    next; 0 when it is no run. Counted up to ``MAX_CHAIN + 1``."""
    depth = 0
    current: str | None = execution_id
    seen: set[str] = set()
    while current and current not in seen and depth <= MAX_CHAIN:
        seen.add(current)
        run = state.runs.get(current)
        if run is None:
            break
        depth += 1
        if run.requested_by:
            current = run.requested_by
            continue
        blob = state.blobs.get(run.blob_id)
        if blob is None or not 1 <= run.blob_version <= blob.version:
            break
        version = blob.versions[run.blob_version - 1]
        origin = effective_origin(state, version.origin, version.by)
        current = origin.execution_id if origin is not None else None
    return depth


def chain_depth(state: StudioState, origin: BlobOrigin | None) -> int:
    """How many runs deep a write with ``origin`` is: 0 for a client's write, else the depth of
    the run that wrote it (``run_depth``)."""
    return run_depth(state, origin.execution_id) if origin is not None else 0


_USERS = uuid.UUID("1b7d3c9e-6f0a-4a51-8e47-2a9c5d0b7f13")


def user_id(owner: str) -> str:
    """The ``user_id`` of a run's input: the owning client's id when it is a UUID, else a UUID
    derived from it (the same for every run of the client). Seed 004's ``blob_input_schema_v1``
    requires a UUID there; Nexus names clients freely (``acme``)."""
    try:
        return str(uuid.UUID(owner))
    except ValueError:
        return str(uuid.uuid5(_USERS, owner))


@dataclass
class Start:
    """One workflow start to send."""

    blob_id: str
    blob_version: int
    owner: str
    provider_id: str
    provider_owner: str
    workflow_id: str
    priority: int
    trigger: str
    metadata: dict[str, Any]
    key: str
    requested_by: str = ""
    queued_at: float = field(default_factory=time.perf_counter)
    attempt: int = 0
    traceparent: str | None = field(default_factory=current_traceparent)
    """The trace of what caused the start (the blob's write, a trigger request): the start
    command is sent in it, so the execution is part of that trace."""


class TriggerBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /providers/trigger``: start these providers' workflows for the blob now."""

    blob_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    provider_ids: (
        Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]], msgspec.Meta(max_length=32)] | None
    ) = None
    """None or empty: every provider reacting to the blob's owner."""
    metadata: dict[str, Any] | None = None
    """Passed to the workflows' input as ``metadata`` (default: the blob's metadata)."""


class TriggeredRun(msgspec.Struct, frozen=True, kw_only=True):
    """One execution started."""

    execution_id: str
    provider_id: str
    workflow_id: str
    priority: int


class TriggerAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The executions started, and the providers named that the caller has no such provider of."""

    blob_id: str
    blob_version: int
    executions: list[TriggeredRun]
    unknown_providers: list[str] = []


class Triggers:
    """Starts providers' workflows for blob events; see the module."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        self._queue: asyncio.Queue[Start] = asyncio.Queue()
        self._retries: set[asyncio.TimerHandle] = set()
        self.latencies: list[float] = []
        """Seconds from a blob event's folding to its run's start being recorded (bench, tests)."""
        self.keep_latencies = False

    # -- matching ---------------------------------------------------------------------------------

    def observe(self, event: CloudEvent) -> None:
        """Follower of the fold: queue the starts a blob event asks for."""
        trigger = _EVENT_OF.get(event.type)
        if trigger is None:
            return
        data = event.data if isinstance(event.data, Mapping) else {}
        blob = self.ctx.state.blobs.get(str(data.get("blob_id") or ""))
        if blob is None:
            return
        version = int(data.get("version") or 1) if trigger == "onUpdate" else blob.version
        if trigger == "onUpdate" and version != blob.version:
            return  # an update the fold refused (out of order)
        raw_origin = data.get("origin")
        by = str(data.get("created_by") or data.get("updated_by") or data.get("deleted_by") or "")
        origin = effective_origin(
            self.ctx.state, msgspec.convert(raw_origin, BlobOrigin) if isinstance(raw_origin, Mapping) else None, by
        )
        depth = chain_depth(self.ctx.state, origin)
        if depth >= MAX_CHAIN:
            logger.warning("blob %s v%d: a chain of %d runs deep triggers nothing more", blob.blob_id, version, depth)
            return
        for start in self.matching(blob, version, trigger, origin):
            self._queue.put_nowait(start)

    def matching(self, blob: Blob, version: int, trigger: str, origin: BlobOrigin | None) -> list[Start]:
        """The starts ``trigger`` on ``blob`` at ``version`` asks for."""
        document = trigger_document(blob)
        starts = []
        for provider in visible_providers(self.ctx.state.providers, blob.owner):
            if origin is not None and origin.provider_id == provider.provider_id:
                continue  # a run's own write does not trigger its provider again
            for workflow in provider.document.get("workflows") or []:
                fired = any(
                    t.get("event") == trigger and matches(list(t.get("conditions") or []), document)
                    for t in workflow.get("triggers") or []
                )
                if fired:
                    starts.append(self._start(blob, version, provider, workflow, trigger, None))
        return starts

    def _start(
        self,
        blob: Blob,
        version: int,
        provider: Provider,
        workflow: Mapping[str, Any],
        trigger: str,
        request_key: str | None,
        metadata: dict[str, Any] | None = None,
    ) -> Start:
        workflow_id = str(workflow.get("workflow_id"))
        parts = ["studio", blob.blob_id, f"v{version}", trigger, provider.owner, provider.provider_id, workflow_id]
        if request_key is not None:
            parts += ["manual", request_key]
        return Start(
            blob_id=blob.blob_id,
            blob_version=version,
            owner=blob.owner,
            provider_id=provider.provider_id,
            provider_owner=provider.owner,
            workflow_id=workflow_id,
            priority=int(workflow.get("priority", 50)),
            trigger=trigger,
            metadata=dict(metadata if metadata is not None else blob.current.metadata),
            key=stable_id(*parts),
        )

    # -- starting ---------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Queue the starts of each blob's latest event that no run records (at start: a studio
        stopped between a write and its starts, or started after a replica wrote while none was
        following). Only providers registered before that event was written count, so a provider
        registered later does not fire on old blobs. Returns how many starts were queued."""
        state = self.ctx.state
        queued = 0
        for blob in list(state.blobs.values()):
            version = blob.current
            trigger = "onDelete" if blob.deleted else "onUpdate" if blob.version > 1 else "onCreate"
            at = blob.deleted_at if blob.deleted and blob.deleted_at else version.at
            origin = effective_origin(state, version.origin, version.by)
            if chain_depth(state, origin) >= MAX_CHAIN:
                continue
            for start in self.matching(blob, blob.version, trigger, origin):
                provider = state.providers.get((start.provider_owner, start.provider_id))
                if provider is None or provider.registered_at > at:
                    continue
                known = state.started.get((blob.blob_id, blob.version, start.provider_id, start.workflow_id))
                run = state.runs.get(known) if known else None
                if run is not None and run.trigger == trigger:
                    continue
                self._queue.put_nowait(start)
                queued += 1
        return queued

    async def run(self) -> None:
        """Sweep, then send queued starts with a few workers until cancelled."""
        swept = self.sweep()
        if swept:
            logger.info("%d provider starts recorded by no run are sent now", swept)
        workers = [asyncio.create_task(self._work(), name=f"studio-trigger-{i}") for i in range(_WORKERS)]
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
            start = await self._queue.get()
            try:
                with _tracer.start_as_current_span(
                    "studio.start",
                    context=parent_context(start.traceparent),
                    attributes={
                        "nexus.blob.id": start.blob_id,
                        "nexus.provider.id": start.provider_id,
                        "nexus.workflow.id": start.workflow_id,
                        "nexus.studio.trigger": start.trigger,
                        "nexus.studio.attempt": start.attempt + 1,
                    },
                ):
                    await self.start(start)
            except asyncio.CancelledError:
                raise
            except _Refused as exc:
                logger.warning(
                    "provider %s: workflow %s not started for blob %s: %s",
                    start.provider_id,
                    start.workflow_id,
                    start.blob_id,
                    exc,
                )
            except Exception:
                attempt = start.attempt
                if attempt >= len(_RETRY_SECONDS):
                    logger.exception("provider %s: starting %s failed; given up", start.provider_id, start.workflow_id)
                    continue
                logger.warning("provider %s: starting %s failed; again soon", start.provider_id, start.workflow_id)
                start.attempt = attempt + 1
                self._later(start, _RETRY_SECONDS[attempt])

    def _later(self, start: Start, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._retries.discard(handle)
            self._queue.put_nowait(start)

        handle = loop.call_later(delay, again)
        self._retries.add(handle)

    async def start(self, start: Start) -> str:
        """Send the start command (idempotent by ``start.key``) and record the run; the execution id.

        Raises:
            _Refused: the workflow service refused (no such workflow, input refused).
            BusError: it did not answer in time.
        """
        state = self.ctx.state
        if start.trigger != "manual":
            known = state.started.get((start.blob_id, start.blob_version, start.provider_id, start.workflow_id))
            run = state.runs.get(known) if known else None
            if run is not None and run.trigger == start.trigger:
                return run.execution_id
        provider_ids = [start.provider_id]
        command = WorkflowStartCommand(
            workflow_id=start.workflow_id,
            input={
                "blob_id": start.blob_id,
                "user_id": user_id(start.owner),
                "provider_ids": provider_ids,
                "metadata": start.metadata,
            },
            priority=max(0, min(100, start.priority)),
            idempotency_key=start.key,
            correlation_id=start.blob_id,
            trigger={
                "kind": "studio",
                "event": start.trigger,
                "provider_id": start.provider_id,
                "blob_version": start.blob_version,
            },
        )
        event = new_event(f"{CMD_PREFIX}.workflow.start", command, source=self.ctx.source, subject=start.blob_id)
        reply = await self.ctx.service.bus.request(
            cmd_subject("workflow", "start"),
            encode_event(event),
            timeout=START_TIMEOUT_SECONDS,
            headers={TENANT_HEADER: start.owner},
        )
        try:
            answer = json.loads(reply)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise _Refused("the workflow service answered with something that is not JSON")
        if answer.get("accepted") is False or not isinstance(answer.get("id"), str) or not answer.get("id"):
            raise _Refused(str(answer.get("reason") or answer.get("error") or "refused"))
        execution_id = str(answer["id"])
        started = new_event(
            RUN_STARTED,
            StudioRunStarted(
                execution_id=execution_id,
                blob_id=start.blob_id,
                blob_version=start.blob_version,
                provider_id=start.provider_id,
                workflow_id=start.workflow_id,
                trigger=start.trigger,
                priority=start.priority,
                requested_by=start.requested_by,
            ),
            source=self.ctx.source,
            id=stable_id(execution_id, "started"),
            subject=start.blob_id,
            correlationid=start.blob_id,
            tenant=start.owner,
        )
        try:
            await self.ctx.fold.append(run_stream(execution_id), [started], expected_version=NO_STREAM)
        except (ConcurrencyError, DuplicateEventError):
            pass  # recorded already (another replica, or a start sent again)
        if self.keep_latencies:
            self.latencies.append(time.perf_counter() - start.queued_at)
        return execution_id

    async def trigger_now(
        self,
        blob: Blob,
        provider_ids: list[str] | None,
        metadata: dict[str, Any] | None,
        request_key: str,
        requested_by: str = "",
    ) -> TriggerAnswer:
        """``POST /providers/trigger``: start the named providers' workflows for ``blob`` now."""
        # The owner's own provider wins over a platform one of the same id.
        ranked = sorted(visible_providers(self.ctx.state.providers, blob.owner), key=lambda p: p.owner == blob.owner)
        visible = {p.provider_id: p for p in ranked}
        wanted = list(dict.fromkeys(provider_ids)) if provider_ids else sorted(visible)
        unknown = [p for p in wanted if p not in visible]
        starts = [
            self._start(blob, blob.version, visible[p], w, "manual", request_key, metadata)
            for p in wanted
            if p in visible
            for w in visible[p].document.get("workflows") or []
        ]
        runs = []
        for start in starts:
            start.requested_by = requested_by
            try:
                execution_id = await self.start(start)
            except BusError as exc:
                raise HTTPError(
                    503, f"the workflow service did not answer in time ({exc}); trigger again (at most one start each)"
                ) from None
            except _Refused as exc:
                raise HTTPError(
                    422, f"the workflow service refused to start {start.workflow_id!r} of {start.provider_id!r}: {exc}"
                ) from None
            runs.append(
                TriggeredRun(
                    execution_id=execution_id,
                    provider_id=start.provider_id,
                    workflow_id=start.workflow_id,
                    priority=start.priority,
                )
            )
        return TriggerAnswer(
            blob_id=blob.blob_id, blob_version=blob.version, executions=runs, unknown_providers=unknown
        )


class _Refused(Exception):
    """The workflow service refused a start: trying again would not help."""


def install(ctx: StudioContext) -> Triggers:
    """Follow blob events, start the matching providers' workflows; add ``POST /providers/trigger``."""
    triggers = Triggers(ctx)
    ctx.fold.on_event(triggers.observe)
    ctx.service.app[TRIGGERS] = triggers

    @ctx.service.background
    async def start_runs(service: Any) -> None:
        await triggers.run()

    @ctx.service.route(
        "POST",
        "/providers/trigger",
        summary="Start providers' workflows for a blob now (seed 004's blob_processing_workflow calls it)",
        request=TriggerBody,
        response=TriggerAnswer,
        responses={
            400: "The body is not understood",
            404: "No such blob of the caller's",
            409: "The blob is deleted",
            422: "The workflow service refused a start",
            503: "The workflow service did not answer in time",
        },
        tags=["providers"],
        auth="client",
    )
    async def trigger(request: web.Request) -> web.Response:
        info: KeyInfo = request[AUTH]
        body = await read_json(request, TriggerBody)
        blob = ctx.state.blobs.get(body.blob_id)
        if blob is None or not (info.is_admin or blob.owner == info.tenant):
            raise HTTPError(404, f"no blob {body.blob_id!r}")
        if blob.deleted:
            raise HTTPError(409, f"blob {body.blob_id} is deleted")
        if info.execution_id and run_depth(ctx.state, info.execution_id) >= MAX_CHAIN:
            raise HTTPError(
                409, f"execution {info.execution_id} is {MAX_CHAIN} provider runs deep; it starts no more (no loop)"
            )
        # A step's retry (same execution) starts nothing twice; another caller starts anew.
        request_key = info.execution_id or str(uuid.uuid4())
        answer = await triggers.trigger_now(
            blob, body.provider_ids, body.metadata, request_key, requested_by=info.execution_id or ""
        )
        return json_response(answer)

    return triggers


TRIGGERS: web.AppKey[Triggers] = web.AppKey("studio_triggers", Triggers)
"""The studio's ``Triggers`` on its application (tests and the bench read its latencies)."""
