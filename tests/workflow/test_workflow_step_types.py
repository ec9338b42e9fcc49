"""Step types are registered by kind, one module each, and decisions are tagged Structs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar, get_args

import msgspec
import pytest

from nexus.proto import CloudEvent, new_event
from nexus.proto.events import workflow as ev
from nexus.services.workflow import steps
from nexus.services.workflow.definitions import COMPENSATION_TYPES, STEP_TYPES, StepKind, parse_workflow
from nexus.services.workflow.handlers import (
    Compensate,
    Finish,
    Idle,
    Resume,
    Run,
    Sleep,
    apply,
    next_action,
)
from nexus.services.workflow.steps import register, registered_kinds, step_type
from nexus.services.workflow.steps.api_call import ApiCall
from nexus.services.workflow.steps.task import Task
from nexus.services.workflow.steps.wait_event import WaitEvent


def test_every_step_kind_has_exactly_one_registered_module() -> None:
    # The kinds a definition may name are the kinds a runner is registered for: no more, no less.
    assert registered_kinds() == frozenset(get_args(StepKind)) == frozenset(STEP_TYPES)
    assert set(COMPENSATION_TYPES) <= registered_kinds()
    assert type(step_type("api_call")) is ApiCall
    assert type(step_type("task")) is Task
    assert type(step_type("wait_event")) is WaitEvent
    # Only the kinds that wait for an event record a bound in step.started.
    assert {k for k in STEP_TYPES if step_type(k).waits} == {"task", "wait_event"}


def test_register_refuses_a_second_runner_and_an_undeclared_kind() -> None:
    class Again:
        kind: ClassVar[str] = "api_call"
        waits: ClassVar[bool] = False

        async def run(self, attempt: steps.StepInput) -> steps.Outcome:
            return steps.Outcome(True)

    with pytest.raises(ValueError, match="registered twice"):
        register(Again)  # the kind is taken
    Again.kind = "sleep_a_while"
    with pytest.raises(ValueError, match=r"not one of definitions\.StepKind"):
        register(Again)  # no definition may name this kind
    assert type(step_type("api_call")) is ApiCall


def _queued(execution_id: str = "e1") -> CloudEvent:
    return new_event(
        "nexus.workflow.execution.queued",
        ev.ExecutionQueued(execution_id=execution_id, workflow_id="w", workflow_version=1, input={}, priority=50),
        source="test",
        subject=execution_id,
    )


def _event(kind: str, data: dict) -> CloudEvent:
    return new_event("nexus.workflow." + kind, {"execution_id": "e1", **data}, source="test", subject="e1")


def test_next_action_answers_with_tagged_structs() -> None:
    workflow = parse_workflow(
        {
            "id": "w",
            "steps": [
                {
                    "id": "a",
                    "service": "s",
                    "endpoint": "/a",
                    "compensation": {"service": "s", "endpoint": "/undo"},
                },
                {"id": "b", "service": "s", "endpoint": "/b"},
            ],
        }
    )
    now = datetime.now(UTC)
    state = apply(None, _queued())
    assert isinstance(next_action(state, workflow, now), Idle)
    state = apply(state, _event("execution.claimed", {"owner": "r", "incarnation": "i"}))
    action = next_action(state, workflow, now)
    assert action == Run(workflow.steps[0], 1)
    assert msgspec.structs.asdict(action)["attempt"] == 1
    assert type(action).__struct_config__.tag == "run"
    state = apply(state, _event("step.started", {"step_id": "a", "attempt": 1}))
    assert next_action(state, workflow, now) == Resume(workflow.steps[0], 1)
    state = apply(state, _event("step.completed", {"step_id": "a", "attempt": 1, "output": 1}))
    retry_at = (now + timedelta(seconds=5)).isoformat()
    state = apply(state, _event("step.started", {"step_id": "b", "attempt": 1}))
    state = apply(state, _event("step.retrying", {"step_id": "b", "attempt": 1, "error": "x", "retry_at": retry_at}))
    sleep = next_action(state, workflow, now)
    assert isinstance(sleep, Sleep) and sleep.step.id == "b"
    assert next_action(state, workflow, now + timedelta(seconds=6)) == Run(workflow.steps[1], 2)
    state = apply(state, _event("step.completed", {"step_id": "b", "attempt": 2, "output": 2}))
    assert isinstance(next_action(state, workflow, now), Finish)
    # A cancel request compensates the completed steps that have a compensation, newest first.
    cancelled = apply(state, _event("execution.cancel_requested", {"reason": "no"}))
    assert next_action(cancelled, workflow, now) == Compensate("cancelled", ("a",))
