"""The orchestrator's completion: ``POST /api/worker-sessions/{execution_id}/complete`` (seed 002, phase 8).

An external orchestrator holding a worker token reports how an execution KAM started ended,
with the seed's body. It is recorded as the watcher records an end it learns from the log
(``outcomes.record_outcome``): the same body again answers the same and records nothing, another
body for an execution that already ended is 409, an execution KAM did not start is 404.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from nexus.auth import AUTH, WORKER_ID
from nexus.proto import now_rfc3339
from nexus.raw import RawError, RawKeyError, RawNotFoundError
from nexus.runtime import HTTPError, json_response, read_json
from nexus.services.kam.context import KamContext
from nexus.services.kam.costs import CostModel, Usage, price, total
from nexus.services.kam.outcomes import CONTENT_TYPE, NewDeliverable, Outcome, client_key, record_outcome, stable_id
from nexus.services.kam.state import Request

__all__ = ["Completion", "WorkerCompletion", "WorkerDeliverable", "WorkerMetrics", "WorkerSessionRoutes", "install"]


class WorkerDeliverable(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One deliverable an orchestrator stored in Raw."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    storage_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=1100)]
    """``raw://<key>`` in the request's client's namespace (``t/<client>/…``), already stored."""
    size_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    metadata: dict[str, Any] = {}
    content_type: Annotated[str, msgspec.Meta(max_length=255, pattern=CONTENT_TYPE)] | None = None
    """Default: the content type Raw stored it with."""


class WorkerMetrics(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The orchestrator's figures of the run (seed 002, phase 8)."""

    # Bounded: these figures price the client's bill.
    total_time_ms: Annotated[int, msgspec.Meta(ge=0, le=366 * 86_400_000)] = 0
    stages_completed: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    tokens_used: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)] = 0
    estimated_cost: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] = 0.0


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


class WorkerSessionRoutes:
    """The handler of the orchestrator's completion."""

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx

    async def complete(self, request: web.Request) -> web.Response:
        """An external orchestrator reports how an execution KAM started ended (seed 002, phase 8).
        The same body again answers the same and records nothing; another body for an execution
        that already ended is 409. Deliverables must be ``raw://`` references already stored in
        the client's namespace; the costs are priced with the template's cost model (the
        orchestrator's own estimate is kept as ``reported_cost``)."""
        execution_id = request.match_info["execution_id"]
        worker = request[WORKER_ID]
        if worker not in self.ctx.settings.orchestrators:
            names = ", ".join(self.ctx.settings.orchestrators)
            raise HTTPError(403, f"worker {worker!r} may not report executions; NEXUS_KAM_ORCHESTRATORS names {names}")
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
        version = item.version  # before anything is awaited: the fold's request moves on
        outcome = await self._reported(item, body, event_id, self.ctx.actor(request[AUTH]))
        if not await record_outcome(self.ctx, item, outcome, version):
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
                stat = await raw.stat(client_key(reported.storage_ref, item.client_id))
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


def install(ctx: KamContext) -> None:
    """Add the orchestrator's completion route to KAM."""
    routes = WorkerSessionRoutes(ctx)
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
