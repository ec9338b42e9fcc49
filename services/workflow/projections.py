"""The workflow service's in-memory folds as replay projections (``nexus replay --verify`` checks them).

Each projection feeds the log's events to the fold the service runs (the executions view, the
registry, the triggers, the jobs) and compares the result with the same fold built the way the
service builds it at start. Imported by ``nexus replay``, which registers them.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any

from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.replay import FoldProjection, register_projection
from nexus.services.workflow.jobapi import JOB_EXECUTED, JOB_INITIATED, JobRecord, job_stream, load_job
from nexus.services.workflow.registry import REGISTRATION_TYPES, WorkflowRegistry
from nexus.services.workflow.triggers import TRIGGER_REGISTERED, TRIGGER_REMOVED, TRIGGERS_STREAM, TriggerFold, view_of
from nexus.services.workflow.view import ExecutionView

__all__ = ["Executions", "Jobs", "Registry", "Triggers"]


class _NoLog:
    """Stands for the log in a fold fed by the replay: it must never need to read one."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"a fold fed by the replay tried to read the log ({name})")


@register_projection
class Executions(FoldProjection):
    """Every execution's state and the replicas' heartbeats, as ``ExecutionView`` folds them."""

    name = "workflow.executions"
    collection = "executions"
    reads = None  # execution streams hold many types, and heartbeats are read too

    def new_fold(self) -> ExecutionView:
        return ExecutionView(_NoLog())  # type: ignore[arg-type]  # fed event by event, in order: no refolds

    def fold_event(self, fold: ExecutionView, event: CloudEvent) -> None:
        fold.observe(event, notify=False)

    def state(self, fold: ExecutionView) -> Mapping[str, Any]:
        out: dict[str, Any] = {f"execution/{key}": state for key, state in fold.states.items()}
        for replica, (incarnation, at) in fold.heartbeats.items():
            out[f"replica/{replica}"] = {"incarnation": incarnation, "at": at}
        return out

    async def running(self, log: EventLog) -> ExecutionView:
        view = ExecutionView(log)
        await view.load()
        return view


@register_projection
class Registry(FoldProjection):
    """Workflow definitions (every version) and schemas, as ``WorkflowRegistry`` folds them."""

    name = "workflow.registry"
    collection = "registry"
    reads = REGISTRATION_TYPES

    def new_fold(self) -> WorkflowRegistry:
        # Services named by api_call steps are checked at registration, not when folding.
        return WorkflowRegistry(_NoLog(), lambda _name: True)  # type: ignore[arg-type]  # folds only, never appends

    def fold_event(self, fold: WorkflowRegistry, event: CloudEvent) -> None:
        fold.apply(event)

    def state(self, fold: WorkflowRegistry) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        for namespace, latest in fold.workflow_entries():
            versions = fold.workflow_versions(latest.id, tenant=namespace)
            out[f"workflow/{namespace}/{latest.id}"] = [d.to_json() for d in versions]
        for namespace, schema in fold.schema_entries():
            out[f"schema/{namespace}/{schema.id}"] = schema.to_json()
        return out

    async def running(self, log: EventLog) -> WorkflowRegistry:
        registry = WorkflowRegistry(log, lambda _name: True)
        await registry.load()
        return registry


@register_projection
class Triggers(FoldProjection):
    """Every tenant's triggers, as the trigger engine folds stream ``triggers``."""

    name = "workflow.triggers"
    collection = "triggers"
    reads = (TRIGGER_REGISTERED, TRIGGER_REMOVED)

    def new_fold(self) -> TriggerFold:
        return TriggerFold()

    def fold_event(self, fold: TriggerFold, event: CloudEvent) -> None:
        if event.streamid == TRIGGERS_STREAM:
            fold.apply(event)

    def state(self, fold: TriggerFold) -> Mapping[str, Any]:
        return {
            f"{tenant}/{trigger_id}": {"trigger": view_of(trigger), "position": trigger.position}
            for (tenant, trigger_id), trigger in fold.triggers.items()
        }

    async def running(self, log: EventLog) -> TriggerFold:
        fold = TriggerFold()
        await fold.refresh(log)
        return fold


class _Streams:
    """Events by stream, answering ``read_stream`` from memory (the job API's reader, fed by the replay)."""

    def __init__(self) -> None:
        self.streams: dict[str, list[CloudEvent]] = {}

    async def read_stream(self, stream: str) -> list[CloudEvent]:
        return self.streams.get(stream, [])


def _now(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that never waits (``load_job`` over ``_Streams``)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine waited")


def _job_state(record: JobRecord) -> dict[str, Any]:
    return {
        "workflow_id": record.workflow_id,
        "title": record.title,
        "description": record.description,
        "owner": record.owner,
        "execution_id": record.execution_id,
        "events": [event.id for event in record.events],
    }


@register_projection
class Jobs(FoldProjection):
    """Jobs of seed 000's API (initiated, executed), as the job API reads them (``load_job``)."""

    name = "workflow.jobs"
    collection = "jobs"
    reads = None  # a job's stream is read whole, whatever its types

    def new_fold(self) -> _Streams:
        return _Streams()

    def fold_event(self, fold: _Streams, event: CloudEvent) -> None:
        stream = event.streamid or ""
        if stream.startswith("job-"):
            fold.streams.setdefault(stream, []).append(event)

    def state(self, fold: _Streams) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        for stream in fold.streams:
            job_id = stream.removeprefix("job-")
            record = _now(load_job(fold, job_id))  # type: ignore[arg-type]  # only read_stream is used
            if record is not None:
                out[job_id] = _job_state(record)
        return out

    async def running(self, log: EventLog) -> dict[str, JobRecord]:
        jobs: dict[str, JobRecord] = {}
        async for batch in log.iter_all(types=(JOB_INITIATED, JOB_EXECUTED)):
            for event in batch:
                job_id = (event.streamid or "").removeprefix("job-")
                if event.streamid == job_stream(job_id) and job_id not in jobs:
                    record = await load_job(log, job_id)
                    if record is not None:
                        jobs[job_id] = record
        return jobs

    def check(self, fold: Any) -> Any:
        if isinstance(fold, dict):
            # The running side: records loaded from the log.
            streams = _Streams()
            for record in fold.values():
                streams.streams[job_stream(record.job_id)] = record.events
            fold = streams
        return super().check(fold)
