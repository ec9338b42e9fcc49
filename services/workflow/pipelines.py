"""Seed 002's orchestrator contract: ``POST /api/pipelines/execute`` and per-stage checkpoints.

The body is the seed's: a ``template`` (its ``name`` and ``stages``), the ``context`` (client,
request, parameters) and the ``resources`` (``max_workers``, ``timeout_ms``). Each stage is a
worker reached through seed 002's protocol, so the template becomes a workflow of this service
(``pipeline_<name>`` in the caller's namespace, a new version only when the template changed)
with three ``api_call`` steps per stage:

- ``<stage>__handshake``: ``POST <worker>/api/handshake`` with the stage's name, input,
  requirements (and validation, when the stage has one);
- ``<stage>__process``: ``POST <worker>/api/process`` with the handshake's id and, from the second
  stage on, the previous stage's ``output_ref`` as ``data_ref`` (a stage whose output came back
  inline passes nothing on: the next stage works from its own input);
- ``<stage>__acknowledge``: ``POST <worker>/api/acknowledge`` with ``status: completed`` and the
  stage's ``output_ref``.

The engine runs it as any execution: durably, each step's outcome in the log before the next
begins, a step retried with its retry policy, and an execution whose replica stopped resumed
after its last recorded step (by the same replica at its restart, or by another when the lease
runs out). That log is the checkpoint: ``GET /api/pipelines/{execution_id}/checkpoint`` reads it
in the seed's shape (``last_completed_stage``, ``checkpoint_data``, ``retry_count``,
``last_error``). A step interrupted by a crash is sent again with the same ``Idempotency-Key``;
a completed stage is never sent again.

A stage's ``worker`` names a service of ``NEXUS_SERVICE_<NAME>`` (``granulator`` is the
platform's; a platform service gets a token delegated from the caller's tenant, an external
one none). Stages run one after another, so one worker at a time serves a pipeline and any
``max_workers`` of at least 1 is met; ``timeout_ms`` bounds the whole execution. Values of a
stage's ``input`` that start with ``$`` are JSONPaths over the execution (``$.input.context
.parameters.depth`` reads the body's parameters), as in any workflow mapping.

Everything belongs to the caller's tenant: another client asking for the checkpoint gets the
404 of a missing execution.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.runtime import HTTPError, Owned, Service, json_response, read_json
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.errors import ProblemsError, UnknownWorkflowError
from nexus.services.workflow.handlers import ExecutionState

__all__ = [
    "Checkpoint",
    "ExecuteBody",
    "PipelineRoutes",
    "Started",
    "checkpoint_of",
    "install",
    "workflow_document",
]

WORKFLOW_PREFIX = "pipeline_"
"""The id of a template's workflow is this prefix and the template's name."""
PHASES = ("handshake", "process", "acknowledge")
"""The steps of one stage, in order (seed 002, phase 5)."""

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,79}$")]
StageName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)*$", max_length=64)]
"""Letters, digits and single underscores: ``<stage>__process`` is then always a step id of its own."""
ServiceName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]


class Requirements(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the stage asks of its worker at the handshake."""

    memory_mb: Annotated[int, msgspec.Meta(ge=1, le=1_048_576)] = 128
    timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=86_400_000)] | None = None
    """Default: 60 s, or the pipeline's ``timeout_ms`` when shorter."""


class Retry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How each of the stage's calls is retried after a retryable failure (5xx, 429, timeout)."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    backoff_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 200


class Stage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One stage of a template: a worker and what to send it."""

    name: StageName
    """The handshake's ``stage`` (``content_granulation``)."""
    worker: ServiceName
    """The service that does it (``NEXUS_SERVICE_<NAME>``)."""
    input: dict[str, Any] = {}
    """The handshake's ``input``; values starting with ``$`` are JSONPaths over the execution."""
    requirements: Requirements = Requirements()
    validation: dict[str, Any] | None = None
    """Passed on to the handshake (seed 002, phase 6: ``enabled``, ``level``, ``threshold``, ``max_retries``)."""
    retry: Retry = Retry()


class Template(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The seed's ``template``: a name and its stages."""

    name: Name
    stages: Annotated[list[Stage], msgspec.Meta(min_length=1, max_length=50)]
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class Resources(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The seed's ``resources``."""

    max_workers: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    timeout_ms: Annotated[int, msgspec.Meta(ge=1000, le=86_400_000)] = 300_000


class ExecuteBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/pipelines/execute``: the seed's body."""

    template: Template
    context: dict[str, Any] = {}
    """``client_id``, ``request_id``, ``parameters``…: the execution's ``$.input.context``."""
    resources: Resources = Resources()
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """The same key starts one execution (also read from the ``Idempotency-Key`` header)."""


class Started(msgspec.Struct, frozen=True, kw_only=True):
    """``202``: the pipeline's execution is queued (durably)."""

    execution_id: str
    status: str
    workflow_id: str
    workflow_version: int
    stages: list[str]
    checkpoint: str
    """Where its checkpoint is read."""


class StageCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One stage as the log describes it."""

    name: str
    worker: str
    status: str
    """``pending``, ``handshake``, ``processing``, ``acknowledging``, ``completed``, ``failed``, ``skipped``."""
    handshake_id: str | None = None
    output_ref: Any = None
    """The stage's output reference (``kv://``, ``r2://``, ``raw://``), or its inline output."""
    attempts: int = 0
    """Calls made to the worker for this stage (every attempt of its three steps)."""
    error: str | None = None


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's checkpoint, read from the execution's log."""

    execution_id: str
    status: str
    """The execution's status (``RUNNING``, ``COMPLETED``, ``FAILED``…)."""
    template: str
    last_completed_stage: str | None
    """The last stage whose result was acknowledged (None before the first)."""
    checkpoint_data: Any
    """That stage's output reference (or its inline output): where a resumed pipeline goes on from."""
    retry_count: int
    """Attempts beyond the first, over every call of the pipeline, plus its restarts."""
    last_error: str | None
    """The most recent failure (a step's, or the execution's), None when nothing failed."""
    restarts: int
    """Times the execution was resumed from its checkpoint after its replica stopped."""
    current_stage: str | None
    stages: list[StageCheckpoint]


def _step(stage: Stage, phase: str) -> str:
    return f"{stage.name}__{phase}"


def workflow_document(template: Template, resources: Resources) -> dict[str, Any]:
    """The workflow that runs ``template``: three ``api_call`` steps per stage (module docstring)."""
    steps: list[dict[str, Any]] = []
    previous: Stage | None = None
    for stage in template.stages:
        timeout_ms = stage.requirements.timeout_ms or min(60_000, resources.timeout_ms)
        retry = {"max_attempts": stage.retry.max_attempts, "backoff_ms": stage.retry.backoff_ms}
        handshake: dict[str, Any] = {
            "stage": stage.name,
            "execution_id": "$.execution.id",
            "input": stage.input,
            "requirements": {"memory_mb": stage.requirements.memory_mb, "timeout_ms": timeout_ms},
        }
        if stage.validation is not None:
            handshake["validation"] = stage.validation
        process: dict[str, Any] = {
            "execution_id": "$.execution.id",
            "handshake_id": f"$.steps.{_step(stage, 'handshake')}.output.handshake_id",
        }
        if previous is not None:
            process["data_ref"] = f"$.steps.{_step(previous, 'process')}.output.output_ref"
        acknowledge = {
            "execution_id": "$.execution.id",
            "handshake_id": f"$.steps.{_step(stage, 'handshake')}.output.handshake_id",
            "status": "completed",
            "output_ref": f"$.steps.{_step(stage, 'process')}.output.output_ref",
        }
        for phase, body, seconds in (
            ("handshake", handshake, 30.0),
            ("process", process, timeout_ms / 1000 + 5),
            ("acknowledge", acknowledge, 30.0),
        ):
            steps.append(
                {
                    "id": _step(stage, phase),
                    "name": f"{stage.name}: {phase}",
                    "type": "api_call",
                    "service": stage.worker,
                    "endpoint": f"/api/{phase}",
                    "method": "POST",
                    "input_map": body,
                    "timeout_seconds": seconds,
                    "retry": retry,
                }
            )
        previous = stage
    output = {
        stage.name: {
            "handshake_id": f"$.steps.{_step(stage, 'handshake')}.output.handshake_id",
            "output": f"$.steps.{_step(stage, 'process')}.output.output",
            "output_ref": f"$.steps.{_step(stage, 'process')}.output.output_ref",
        }
        for stage in template.stages
    }
    return {
        "id": WORKFLOW_PREFIX + template.name.replace("-", "_"),
        "name": template.name,
        "description": template.description or f"Pipeline {template.name} (seed 002's orchestrator contract)",
        "active": True,
        "timeout_seconds": max(1, resources.timeout_ms // 1000),
        "steps": steps,
        "output": {"template": template.name, "stages": output},
    }


def _reference(output: Any) -> Any:
    if not isinstance(output, dict):
        return None
    if output.get("output_ref") is not None:
        return output["output_ref"]
    return output.get("output")


def checkpoint_of(state: ExecutionState) -> Checkpoint:
    """The seed's checkpoint of a pipeline's execution, from its folded state."""
    pipeline = (state.metadata or {}).get("pipeline") or {}
    stages = [(str(s.get("name")), str(s.get("worker"))) for s in pipeline.get("stages", [])]
    described: list[StageCheckpoint] = []
    last_completed: str | None = None
    checkpoint_data: Any = None
    current: str | None = None
    retries = 0
    errors: list[tuple[str, str]] = []
    for name, worker in stages:
        phases = [state.steps.get(f"{name}__{phase}") for phase in PHASES]
        attempts = sum(p.attempts for p in phases if p is not None)
        retries += sum(max(0, p.attempts - 1) for p in phases if p is not None)
        for p in phases:
            if p is not None and p.error:
                errors.append((p.finished_at or p.started_at or "", p.error))
        handshake, process, acknowledge = phases
        status = "pending"
        error = next((p.error for p in phases if p is not None and p.status == "failed"), None)
        if any(p is not None and p.status == "failed" for p in phases):
            status = "failed"
        elif acknowledge is not None and acknowledge.status == "completed":
            status = "completed"
        elif all(p is not None and p.status == "skipped" for p in phases):
            status = "skipped"
        elif process is not None and process.status == "completed":
            status = "acknowledging"
        elif handshake is not None and handshake.status == "completed":
            status = "processing"
        elif handshake is not None and handshake.status != "pending":
            status = "handshake"
        output = process.output if process is not None and process.status == "completed" else None
        if status == "completed":
            last_completed, checkpoint_data = name, _reference(output)
        elif status not in ("pending", "skipped") and current is None:
            current = name
        described.append(
            StageCheckpoint(
                name=name,
                worker=worker,
                status=status,
                handshake_id=(handshake.output or {}).get("handshake_id")
                if handshake is not None and isinstance(handshake.output, dict)
                else None,
                output_ref=_reference(output),
                attempts=attempts,
                error=error,
            )
        )
    last_error = state.error
    if last_error is None and errors:
        last_error = max(errors)[1]
    return Checkpoint(
        execution_id=state.execution_id,
        status=state.status,
        template=str(pipeline.get("template", "")),
        last_completed_stage=last_completed,
        checkpoint_data=checkpoint_data,
        retry_count=retries + state.retry_count,
        last_error=last_error,
        restarts=state.retry_count,
        current_stage=current,
        stages=described,
    )


def _caller(request: web.Request) -> KeyInfo:
    return request[AUTH]


class PipelineRoutes:
    """The handlers of the orchestrator's routes."""

    def __init__(self, ctx: WorkflowContext) -> None:
        self.ctx = ctx

    async def execute(self, request: web.Request) -> web.Response:
        """Register the template's workflow (when it changed) and start it for the caller's tenant."""
        body = await read_json(request, ExecuteBody)
        tenant = _caller(request).tenant
        services = self.ctx.settings.services
        unknown = [
            f"$.template.stages[{i}].worker: no service {s.worker!r} (set NEXUS_SERVICE_{s.worker.upper()})"
            for i, s in enumerate(body.template.stages)
            if s.worker not in services
        ]
        names = [s.name for s in body.template.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            unknown.append(f"$.template.stages: stage names must differ; repeated: {', '.join(repeated)}")
        if unknown:
            raise HTTPError(400, "; ".join(unknown), error="invalid_template")
        document = workflow_document(body.template, body.resources)
        try:
            workflow = await self.ctx.registry.register_workflow(
                document, source="pipelines", only_if_changed=True, tenant=tenant
            )
        except ProblemsError as exc:
            raise HTTPError(400, str(exc), error="invalid_template") from None
        metadata = {
            "pipeline": {
                "template": body.template.name,
                "stages": [{"name": s.name, "worker": s.worker} for s in body.template.stages],
                "max_workers": body.resources.max_workers,
            }
        }
        idempotency_key = body.idempotency_key or request.headers.get("Idempotency-Key") or None
        execution_input = {
            "template": msgspec.to_builtins(body.template),
            "context": body.context,
            "resources": msgspec.to_builtins(body.resources),
        }
        try:
            execution_id = await self.ctx.engine.start(
                workflow.id,
                execution_input,
                idempotency_key=idempotency_key,
                tenant=tenant,
                metadata=metadata,
            )
        except ProblemsError as exc:
            raise HTTPError(400, str(exc), error="invalid_input") from None
        except UnknownWorkflowError as exc:  # registered a moment ago: only a concurrent removal
            raise HTTPError(409, str(exc), error="conflict") from None
        state = self.ctx.engine.get(execution_id)
        location = f"/api/pipelines/{execution_id}/checkpoint"
        return json_response(
            Started(
                execution_id=execution_id,
                status=state.status if state is not None else "QUEUED",
                workflow_id=workflow.id,
                workflow_version=workflow.version,
                stages=[s.name for s in body.template.stages],
                checkpoint=location,
            ),
            status=202,
            headers={"Location": location},
        )

    async def checkpoint(self, request: web.Request) -> web.Response:
        """The execution's checkpoint, read from its log (404 when it is not a pipeline's)."""
        execution_id = request.match_info["execution_id"]
        state = self.ctx.engine.get(execution_id) or await self.ctx.engine.load(execution_id)
        if state is None or not (state.metadata or {}).get("pipeline"):
            raise HTTPError(404, f"no pipeline execution {execution_id!r}")
        return json_response(checkpoint_of(state))


_ID = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")


def install(service: Service, ctx: WorkflowContext) -> None:
    """Add ``POST /api/pipelines/execute`` and ``GET /api/pipelines/{execution_id}/checkpoint``."""
    routes = PipelineRoutes(ctx)
    route = functools.partial(service.route, auth="client", tags=["pipelines (seed 002)"])
    route(
        "POST",
        "/api/pipelines/execute",
        summary="Run a template's stages through the workers' handshake, process and acknowledge (seed 002)",
        request=ExecuteBody,
        response=Started,
        status=202,
        responses={400: "Bad body, or a stage names an unknown worker (each problem is named)"},
    )(routes.execute)

    async def owner(execution_id: str) -> str | None:
        if not _ID.match(execution_id):
            return None
        return await ctx.engine.tenant_of(execution_id)

    route(
        "GET",
        "/api/pipelines/{execution_id}/checkpoint",
        summary="A pipeline's checkpoint: last completed stage, its data, retries and last error",
        response=Checkpoint,
        owned=Owned("pipeline", "execution_id", owner),
        responses={404: "No such pipeline execution"},
    )(routes.checkpoint)
