"""Pure functions of the workflow engine: the state of an execution as a fold of its events, and
what to do next given that state, its definition and the time.

Nothing here does I/O; the driver of an execution (``driver.py``) reads and appends events and
calls these. ``next_action`` answers with one of the ``Action`` Structs, tagged by kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import msgspec

from nexus.proto import PLATFORM_TENANT, CloudEvent, parse_rfc3339
from nexus.services.workflow.context import FINAL_STATUSES
from nexus.services.workflow.definitions import StepDefinition, WorkflowDefinition

__all__ = [
    "Action",
    "Attempting",
    "Compensate",
    "CompensationReason",
    "ExecutionState",
    "Final",
    "Finish",
    "Idle",
    "Resume",
    "Run",
    "Sleep",
    "StepState",
    "apply",
    "context_of",
    "fold",
    "next_action",
    "parse_time",
    "stream_id",
    "time_after",
    "with_changes",
]

PREFIX = "nexus.workflow."

CompensationReason = Literal["failed", "cancelled", "timed_out"]
"""Why an execution compensates (and so the status it ends in)."""


_T = TypeVar("_T")


def stream_id(execution_id: str) -> str:
    """The log stream of an execution."""
    return f"execution-{execution_id}"


def parse_time(text: str) -> datetime:
    """An RFC 3339 instant (as the events store them) as an aware datetime."""
    return parse_rfc3339(text)


def time_after(now: datetime, seconds: float) -> str:
    """``now + seconds`` as RFC 3339 (UTC, microseconds)."""
    return (now + timedelta(seconds=seconds)).astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class StepState:
    """What has happened to one step (and its compensation) so far."""

    status: str = "pending"
    """pending, running, retrying, completed, skipped, failed."""
    attempts: int = 0
    """Attempts started."""
    output: Any = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    retry_at: str | None = None
    wait_until: str | None = None
    after_position: int | None = None
    duration_ms: float | None = None
    compensation_status: str | None = None
    """None (not compensated), running, retrying, completed, failed."""
    compensation_attempts: int = 0
    compensation_error: str | None = None
    compensation_retry_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ExecutionState:
    """An execution as its events describe it."""

    execution_id: str
    workflow_id: str = ""
    workflow_version: int = 0
    status: str = "QUEUED"
    priority: int = 50
    input: Any = None
    provider_id: str = ""
    idempotency_key: str | None = None
    trigger: dict[str, Any] | None = None
    correlation_id: str | None = None
    traceparent: str | None = None
    """The trace of what started the execution (``execution.queued``'s envelope): every driver
    of it, in any replica and after any restart, continues that trace."""
    tenant: str = PLATFORM_TENANT
    """The client that owns the execution."""
    workflow_tenant: str = PLATFORM_TENANT
    """The namespace of the definition it runs."""
    version: int = 0
    """Stream version of the last event folded in (the ``expected_version`` of the next append)."""
    position: int = 0
    """Global log position of the last event folded in."""
    created_at: str | None = None
    started_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    owner: str | None = None
    incarnation: str | None = None
    deadline: str | None = None
    current_step: str | None = None
    steps: dict[str, StepState] = field(default_factory=dict)
    output: Any = None
    error: str | None = None
    failed_step: str | None = None
    cancel_requested: str | None = None
    compensating_reason: str | None = None
    compensation_plan: tuple[str, ...] = ()
    claims: int = 0
    """``execution.claimed`` events so far: the first dispatch and every one after it."""
    max_retries: int | None = None
    """Dispatches allowed after the first (None: no limit); see ``engine``'s docstring."""
    metadata: dict[str, Any] | None = None
    """The caller's own fields, given at start."""

    @property
    def retry_count(self) -> int:
        """Times the execution was dispatched again after its driver stopped without finishing it."""
        return max(0, self.claims - 1)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def workflow_key(self) -> str:
        """The workflow's id, qualified by its namespace unless it is the platform's."""
        if self.workflow_tenant == PLATFORM_TENANT:
            return self.workflow_id
        return f"{self.workflow_tenant}.{self.workflow_id}"

    def to_json(self) -> dict[str, Any]:
        """The state as the HTTP API shows it."""
        timings: dict[str, Any] = {
            "created_at": self.created_at,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        }
        if self.created_at and self.finished_at:
            timings["duration_ms"] = round(
                (parse_time(self.finished_at) - parse_time(self.created_at)).total_seconds() * 1000, 3
            )
        return {
            "id": self.execution_id,
            "workflow_id": self.workflow_id,
            "workflow_version": self.workflow_version,
            "status": self.status,
            "priority": self.priority,
            "current_step": self.current_step,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "failed_step": self.failed_step,
            "steps": {sid: s.to_json() for sid, s in self.steps.items()},
            "timings": timings,
            "idempotency_key": self.idempotency_key,
            "trigger": self.trigger,
            "correlation_id": self.correlation_id,
            "tenant": self.tenant,
            "owner": self.owner,
            "deadline": self.deadline,
            "cancel_requested": self.cancel_requested,
            "retry_count": self.retry_count,
            "max_retries": self.max_retries,
            "metadata": self.metadata,
            "version": self.version,
        }


def _step(state: ExecutionState, step_id: str) -> StepState:
    return state.steps.get(step_id) or StepState()


def _replace(obj: _T, changes: dict[str, Any]) -> _T:
    """``dataclasses.replace`` for these frozen dataclasses without re-running ``__init__``
    (the fold runs for every event, and ``replace`` was its main cost)."""
    new: _T = object.__new__(type(obj))
    object.__setattr__(new, "__dict__", {**obj.__dict__, **changes})
    return new


def with_changes(state: ExecutionState, **changes: Any) -> ExecutionState:
    """A copy of ``state`` with ``changes`` (the cheap ``dataclasses.replace`` of ``_replace``)."""
    return _replace(state, changes)


def _with_step(state: ExecutionState, step_id: str, **changes: Any) -> dict[str, StepState]:
    steps = dict(state.steps)
    steps[step_id] = _replace(_step(state, step_id), changes)
    return steps


def apply(state: ExecutionState | None, event: CloudEvent) -> ExecutionState:
    """The state after ``event`` (a new state; ``state`` is not changed). Unknown types change only the version."""
    data = event.data if isinstance(event.data, dict) else {}
    if state is None:
        state = ExecutionState(execution_id=data.get("execution_id", ""))
    kind = event.type[len(PREFIX) :] if event.type.startswith(PREFIX) else event.type
    base: dict[str, Any] = {
        "version": event.streamversion or state.version + 1,
        "position": event.position or state.position,
        "updated_at": event.time,
    }
    compensation = bool(data.get("compensation"))
    step_id = data.get("step_id", "")
    changes: dict[str, Any]
    if kind == "execution.queued":
        changes = {
            "workflow_id": data["workflow_id"],
            "workflow_version": data["workflow_version"],
            "input": data.get("input"),
            "priority": data.get("priority", 50),
            "idempotency_key": data.get("idempotency_key"),
            "provider_id": data.get("provider_id", ""),
            "trigger": data.get("trigger"),
            "tenant": data.get("tenant") or PLATFORM_TENANT,
            "workflow_tenant": data.get("workflow_tenant") or PLATFORM_TENANT,
            "correlation_id": event.correlationid,
            "traceparent": event.traceparent,
            "created_at": event.time,
            "status": "QUEUED",
            "max_retries": data.get("max_retries"),
            "metadata": data.get("metadata"),
        }
    elif kind == "execution.claimed":
        changes = {"owner": data["owner"], "incarnation": data["incarnation"], "claims": state.claims + 1}
        if state.status == "QUEUED":
            changes.update(status="RUNNING", started_at=event.time, deadline=data.get("deadline"))
    elif kind == "step.started":
        if compensation:
            changes = {
                "steps": _with_step(
                    state,
                    step_id,
                    compensation_status="running",
                    compensation_attempts=data["attempt"],
                    compensation_retry_at=None,
                )
            }
        else:
            changes = {
                "current_step": step_id,
                "steps": _with_step(
                    state,
                    step_id,
                    status="running",
                    attempts=data["attempt"],
                    started_at=_step(state, step_id).started_at or event.time,
                    retry_at=None,
                    wait_until=data.get("wait_until"),
                    after_position=data.get("after_position"),
                ),
            }
    elif kind == "step.completed":
        if compensation:
            changes = {"steps": _with_step(state, step_id, compensation_status="completed")}
        else:
            changes = {
                "steps": _with_step(
                    state,
                    step_id,
                    status="completed",
                    output=data.get("output"),
                    finished_at=event.time,
                    duration_ms=data.get("duration_ms"),
                    error=None,
                )
            }
    elif kind == "step.skipped":
        changes = {
            "current_step": step_id,
            "steps": _with_step(state, step_id, status="skipped", finished_at=event.time, error=data.get("reason")),
        }
    elif kind == "step.retrying":
        if compensation:
            changes = {
                "steps": _with_step(
                    state,
                    step_id,
                    compensation_status="retrying",
                    compensation_error=data["error"],
                    compensation_retry_at=data["retry_at"],
                )
            }
        else:
            changes = {
                "steps": _with_step(state, step_id, status="retrying", error=data["error"], retry_at=data["retry_at"])
            }
    elif kind == "step.failed":
        if compensation:
            changes = {
                "steps": _with_step(state, step_id, compensation_status="failed", compensation_error=data["error"])
            }
        else:
            changes = {
                "steps": _with_step(state, step_id, status="failed", error=data["error"], finished_at=event.time),
            }
            if data.get("on_failure", "fail") == "fail":
                changes.update(error=f"step {step_id} failed: {data['error']}", failed_step=step_id)
    elif kind == "execution.compensating":
        changes = {
            "status": "COMPENSATING",
            "compensating_reason": data["reason"],
            "compensation_plan": tuple(data.get("steps", ())),
        }
        if data.get("error"):
            changes["error"] = data["error"]
    elif kind == "execution.cancel_requested":
        changes = {"cancel_requested": data.get("reason") or "cancelled"}
    elif kind == "execution.completed":
        changes = {"status": "COMPLETED", "output": data.get("output"), "finished_at": event.time, "current_step": None}
    elif kind in ("execution.failed", "execution.compensated"):
        changes = {
            "status": "FAILED" if kind == "execution.failed" else "COMPENSATED",
            "error": data.get("error"),
            "failed_step": data.get("step_id") or state.failed_step,
            "finished_at": event.time,
            "current_step": None,
        }
    elif kind == "execution.cancelled":
        changes = {
            "status": "CANCELLED",
            "error": state.error or f"cancelled: {data.get('reason', 'cancelled')}",
            "finished_at": event.time,
            "current_step": None,
        }
    elif kind == "execution.timed_out":
        changes = {
            "status": "TIMED_OUT",
            "error": f"execution passed its deadline {data.get('deadline')}",
            "finished_at": event.time,
            "current_step": None,
        }
    else:
        changes = {}
    base.update(changes)
    return _replace(state, base)


def fold(events: list[CloudEvent]) -> ExecutionState | None:
    """The state after all ``events`` (None for no events)."""
    state: ExecutionState | None = None
    for event in events:
        state = apply(state, event)
    return state


def context_of(state: ExecutionState, workflow: WorkflowDefinition) -> dict[str, Any]:
    """The document JSONPaths are evaluated against: ``$.input``, ``$.steps.<id>.output``, ``$.execution``,
    ``$.variables`` (the workflow's), ..."""
    return {
        "input": state.input,
        "steps": {
            sid: {"output": s.output, "status": s.status, "error": s.error, "attempts": s.attempts}
            for sid, s in state.steps.items()
        },
        "execution": {
            "id": state.execution_id,
            "workflow_id": state.workflow_id,
            "workflow_version": state.workflow_version,
            "priority": state.priority,
            "idempotency_key": state.idempotency_key,
            "correlation_id": state.correlation_id,
            "metadata": state.metadata,
        },
        "provider_id": state.provider_id or workflow.provider_id,
        "workflow": {"id": workflow.id, "version": workflow.version, "name": workflow.name},
        "variables": workflow.variables,
    }


# --- decisions --------------------------------------------------------------------------------


class Run(msgspec.Struct, frozen=True, tag="run"):
    """Start attempt ``attempt`` of ``step`` (``compensation``: of its compensation)."""

    step: StepDefinition
    attempt: int
    compensation: bool = False


class Resume(msgspec.Struct, frozen=True, tag="resume"):
    """Attempt ``attempt`` was started and has no result: send it again (the same key)."""

    step: StepDefinition
    attempt: int
    compensation: bool = False


class Sleep(msgspec.Struct, frozen=True, tag="sleep"):
    """Nothing to do before ``until`` (a back-off of ``step``), then decide again."""

    step: StepDefinition
    until: datetime
    compensation: bool = False


class Compensate(msgspec.Struct, frozen=True, tag="compensate"):
    """Stop and compensate ``plan`` (step ids, in order) for ``reason``."""

    reason: CompensationReason
    plan: tuple[str, ...] = ()


class Finish(msgspec.Struct, frozen=True, tag="finish"):
    """Every step is done: complete (the engine computes the output)."""


class Final(msgspec.Struct, frozen=True, tag="final"):
    """Compensation is over: end with ``reason``'s status."""

    reason: str


class Idle(msgspec.Struct, frozen=True, tag="idle"):
    """The execution is final (or not started): nothing to drive."""


Attempting = Run | Resume
"""The actions that run an attempt of a step."""
Action = Run | Resume | Sleep | Compensate | Finish | Final | Idle
"""What the driver of an execution does next: one tagged Struct per kind of move."""

_IDLE = Idle()
_FINISH = Finish()


def compensation_plan(state: ExecutionState, workflow: WorkflowDefinition) -> tuple[str, ...]:
    """The completed steps that have a compensation, in reverse order of completion (saga)."""
    done = [s.id for s in workflow.steps if s.compensation is not None and _step(state, s.id).status == "completed"]
    return tuple(reversed(done))


def next_action(state: ExecutionState, workflow: WorkflowDefinition, now: datetime) -> Action:
    """Decide the next move of a RUNNING or COMPENSATING execution."""
    if state.final or state.status == "QUEUED":
        return _IDLE
    if state.status == "RUNNING":
        if state.cancel_requested:
            return Compensate("cancelled", compensation_plan(state, workflow))
        if state.deadline and now >= parse_time(state.deadline):
            return Compensate("timed_out", compensation_plan(state, workflow))
        for step in workflow.steps:
            s = _step(state, step.id)
            if s.status in ("completed", "skipped"):
                continue
            if s.status == "failed":
                if step.on_failure == "continue":
                    continue
                return Compensate("failed", compensation_plan(state, workflow))
            if s.status == "pending":
                return Run(step, 1)
            if s.status == "running":
                return Resume(step, s.attempts)
            if s.status == "retrying":
                due = parse_time(s.retry_at) if s.retry_at else now
                if due > now:
                    return Sleep(step, due)
                return Run(step, s.attempts + 1)
        return _FINISH
    # COMPENSATING
    for step_id in state.compensation_plan:
        planned = workflow.step(step_id)
        s = _step(state, step_id)
        if planned is None or s.compensation_status in ("completed", "failed"):
            continue
        step = planned
        if s.compensation_status is None:
            return Run(step, 1, compensation=True)
        if s.compensation_status == "running":
            return Resume(step, s.compensation_attempts, compensation=True)
        due = parse_time(s.compensation_retry_at) if s.compensation_retry_at else now
        if due > now:
            return Sleep(step, due, compensation=True)
        return Run(step, s.compensation_attempts + 1, compensation=True)
    return Final(state.compensating_reason or "failed")


def final_status(state: ExecutionState) -> str:
    """The status a compensated execution ends in."""
    reason = state.compensating_reason or "failed"
    if reason == "cancelled":
        return "CANCELLED"
    if reason == "timed_out":
        return "TIMED_OUT"
    failed = any(_step(state, sid).compensation_status == "failed" for sid in state.compensation_plan)
    return "FAILED" if failed or not state.compensation_plan else "COMPENSATED"
