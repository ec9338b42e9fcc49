"""Driving one execution: claim it, run its steps one attempt at a time, compensate, end it.

The driver decides with ``handlers.next_action`` (pure) and records every transition with
``stage`` (the new event and state, in memory) and ``flush`` (one append at the version it last
saw, so a replica that lost the execution stops at its next append). An attempt's work is the
step type's (``steps/``); the driver records its outcome (``step.completed``,
``step.retrying`` with the due time, ``step.failed``) batched with the next step's start.

Tracing: an execution is one trace. ``execution.queued`` records the ``traceparent`` of what
started it (a request, a command, a triggering event); every driver of the execution, in any
replica and after any restart, works inside that context, so its appends are spans of the
trace. Each attempt is a span (``step <id>`` or ``compensate <id>``; attributes: workflow, step,
attempt, service called, outcome) whose context the step sends on (``traceparent`` header of the
HTTP call or the task command), so the callee's span is its child. A scheduled retry is an event
of the attempt's span, a back-off wait a ``sleep`` span, a take-over and the start of
compensation spans of their own. No span outlives one driver's work: a span open when the
process dies is never exported, and nothing that outlives it hangs from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from nexus.eventlog import ConcurrencyError, EventTooLargeError
from nexus.obs import current_traceparent, parent_context
from nexus.proto import CloudEvent, RandomPool, new_event
from nexus.proto.events import workflow as ev
from nexus.services.workflow import metrics
from nexus.services.workflow.definitions import CompensationDefinition, StepDefinition, WorkflowDefinition
from nexus.services.workflow.errors import UnknownWorkflowError
from nexus.services.workflow.expressions import Condition
from nexus.services.workflow.handlers import (
    Action,
    Attempting,
    Compensate,
    ExecutionState,
    Final,
    Finish,
    Idle,
    Resume,
    Run,
    Sleep,
    apply,
    compensation_plan,
    context_of,
    final_status,
    fold,
    next_action,
    parse_time,
    stream_id,
    time_after,
    with_changes,
)
from nexus.services.workflow.steps import StepInput, StepType, step_type, traceparent_for

if TYPE_CHECKING:
    from nexus.services.workflow.engine import WorkflowEngine

__all__ = ["SOURCE", "AlreadyExists", "Driver", "LostOwnership", "execution_event"]

logger = logging.getLogger("nexus.workflow.engine")

SOURCE = "nexus/workflow"
_T = "nexus.workflow."
_QUEUED = _T + "execution.queued"

_tracer = trace.get_tracer("nexus.workflow")


def _mark(name: str, attributes: dict[str, Any]) -> None:
    """A span of no duration in the current trace: something the driver decided (a take-over, compensation)."""
    _tracer.start_span(name, attributes=attributes).end()


def _now() -> datetime:
    return datetime.now(UTC)


class LostOwnership(Exception):
    """Another replica appended to the execution; this one stops driving it."""


class AlreadyExists(Exception):
    """An execution started at once already existed (same idempotency key); nothing to drive."""


def execution_event(
    ids: RandomPool, state: ExecutionState, kind: str, struct: type[msgspec.Struct], **data: Any
) -> CloudEvent:
    """An event of ``state``'s stream: ``nexus.workflow.<kind>`` with ``struct(execution_id, **data)``."""
    return new_event(
        _T + kind,
        struct(execution_id=state.execution_id, **data),
        source=SOURCE,
        id=ids.event_id(),
        subject=state.execution_id,
        correlationid=state.correlation_id or state.execution_id,
        tenant=state.tenant,
    )


class Driver:
    """Drives one execution; every transition goes through ``stage`` and ``flush``.

    Args:
        engine: Lends the log, the view, the registry, this replica's identity and the step runtime.
        state: The execution as last seen.
        committed: The stream version the next append expects (default: ``state.version``;
            0 for an execution started at once, whose ``queued`` event is still pending).
    """

    def __init__(self, engine: WorkflowEngine, state: ExecutionState, committed: int | None = None) -> None:
        self.engine = engine
        self.state = state
        self.committed = state.version if committed is None else committed
        self.first_append: asyncio.Future[None] | None = None
        """Set for an execution started at once: resolved when its ``queued`` event is stored."""
        self.pending: list[CloudEvent] = []
        self.pending_states: list[ExecutionState] = []
        """The state after each pending event (handed to the view with the stored events)."""
        self.execution_id = state.execution_id
        self.stream = stream_id(state.execution_id)
        self.wake = asyncio.Event()
        """Set on a cancel request (by the scheduler): a sleep or a wait ends early and re-decides."""
        self.workflow: WorkflowDefinition | None = None
        self.traceparent = traceparent_for(state.execution_id, engine.ids.hex)
        """Sent by steps when no tracer is installed (the execution's calls still share one trace id)."""
        self.origin = parent_context(state.traceparent)
        """The context of what started the execution, restored for all the driver does."""
        self.ready_at = time.perf_counter()

    async def drive(self, takeover: bool) -> None:
        """Run the execution until it is final, waits elsewhere, or is lost; never raises but on cancel."""
        # The trace of what started the execution, whatever task or process drives it now.
        token = otel_context.attach(self.origin) if self.origin is not None else None
        try:
            await self.run(takeover)
        except AlreadyExists:
            pass
        except LostOwnership:
            self.engine.stats.lost_races += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            first = self.first_append
            if first is not None and not first.done():
                # Started at once and nothing was appended: the caller of start() gets the error.
                first.set_exception(exc)
                return
            # The sweeper drives it again (a fresh claim makes the retry visible in the history).
            logger.exception("driving execution %s failed; it resumes on the next sweep", self.execution_id)
            await asyncio.sleep(1)
        finally:
            first = self.first_append
            if first is not None and not first.done():
                first.cancel()
            if token is not None:
                otel_context.detach(token)

    def stage(self, kind: str, struct: type[msgspec.Struct], **data: Any) -> None:
        event = execution_event(self.engine.ids, self.state, kind, struct, **data)
        self.pending.append(event)
        self.state = apply(self.state, event)
        self.pending_states.append(self.state)

    async def flush(self) -> None:
        if not self.pending:
            return
        events, self.pending = self.pending, []
        states, self.pending_states = self.pending_states, []
        while True:
            try:
                stored = await self.engine.log.append(self.stream, events, expected_version=self.committed)
                break
            except EventTooLargeError as exc:
                # Data grew past what one event may carry (an output that re-encodes larger
                # than it was read): the execution fails naming the cause; nothing half-written.
                events, states = await self._failed_too_large(exc)
            except ConcurrencyError:
                if self.committed == 0:
                    # Started at once, and the stream exists: the same idempotency key.
                    if self.first_append is not None and not self.first_append.done():
                        self.first_append.set_result(None)
                    raise AlreadyExists from None
                # Someone else appended: a cancel request (go on) or a take-over (stop).
                latest = await self.engine.view.refresh(self.execution_id) or fold(
                    await self.engine.log.read_stream(self.stream)
                )
                if (
                    latest is None
                    or latest.owner != self.engine.replica_id
                    or latest.incarnation != self.engine.incarnation
                    or latest.final
                ):
                    raise LostOwnership from None
                rebased = latest
                states = []
                for event in events:
                    rebased = apply(rebased, event)
                    states.append(rebased)
                self.state = rebased
                self.committed = latest.version
        self.committed = stored[-1].streamversion or self.committed + len(stored)
        if stored[0].type == _QUEUED and stored[0].traceparent != states[0].traceparent:
            # Started outside any span: the log stamped the append's trace on it; the view
            # keeps what a replay of the log would fold.
            states = [with_changes(state, traceparent=stored[0].traceparent) for state in states]
            self.state = with_changes(self.state, traceparent=stored[0].traceparent)
        self.engine.stats.transitions += len(stored)
        metrics.count_stored(stored, self.workflow)
        self.engine.view.apply_own(stored, states)
        if self.first_append is not None and not self.first_append.done():
            self.first_append.set_result(None)

    async def _failed_too_large(self, exc: EventTooLargeError) -> tuple[list[CloudEvent], list[ExecutionState]]:
        latest = await self.engine.view.refresh(self.execution_id) or fold(
            await self.engine.log.read_stream(self.stream)
        )
        if latest is None or latest.final:
            raise LostOwnership from None
        error = (
            f"a {exc.event_type} event of {exc.size} bytes exceeds the log's limit of {exc.limit} bytes; "
            "return large values as a raw:// reference"
        )
        self.state, self.committed = latest, latest.version
        self.pending, self.pending_states = [], []
        self.stage("execution.failed", ev.ExecutionFailed, workflow_id=latest.workflow_id, error=error)
        logger.warning("execution %s failed: %s", self.execution_id, error)
        events, self.pending = self.pending, []
        states, self.pending_states = self.pending_states, []
        return events, states

    async def run(self, takeover: bool) -> None:
        engine = self.engine
        state = self.state
        self.workflow = engine.registry.get_workflow(
            state.workflow_id, state.workflow_version, tenant=state.workflow_tenant
        )
        if self.workflow is None:
            raise UnknownWorkflowError(state.workflow_id, state.workflow_version)
        deadline = None
        if state.status == "QUEUED" and self.workflow.timeout_seconds:
            deadline = time_after(_now(), self.workflow.timeout_seconds)
        self.stage(
            "execution.claimed",
            ev.ExecutionClaimed,
            owner=engine.replica_id,
            incarnation=engine.incarnation,
            deadline=deadline,
            previous_owner=state.owner,
        )
        if takeover or self.workflow.max_concurrent is not None:
            # A take-over is claimed at once, so the previous owner learns it has lost before we
            # act; so is a limited workflow's start, so the dispatcher counts it before the next pick.
            await self.flush()
            engine.stats.takeovers += 1
            if takeover:
                _mark(
                    "takeover",
                    {
                        "nexus.execution.id": self.execution_id,
                        "nexus.workflow.id": state.workflow_id,
                        "nexus.workflow.previous_owner": state.owner or "",
                        "nexus.workflow.owner": engine.replica_id,
                    },
                )
        else:
            engine.stats.claimed += 1
        self.ready_at = time.perf_counter()
        while True:
            action = next_action(self.state, self.workflow, _now())
            if isinstance(action, Idle):
                await self.flush()
                return
            await self.perform(action)
            if self.state.final:
                await self.flush()
                return

    async def perform(self, action: Action) -> None:
        workflow = self.workflow
        assert workflow is not None
        match action:
            case Sleep(until=until):
                await self.flush()
                await self.sleep_until(until)
            case Compensate():
                self.begin_compensation(action)
            case Final():
                self.finish_compensation()
            case Finish():
                self.complete()
            case Run() | Resume():
                step = action.step
                context = context_of(self.state, workflow)
                if isinstance(action, Run) and not action.compensation and action.attempt == 1:
                    if step.condition is not None and not self.condition_holds(step, step.condition, context):
                        return
                await self.attempt(step, action, context)
            case Idle():
                pass

    def condition_holds(self, step: StepDefinition, condition: Condition, context: dict[str, Any]) -> bool:
        """Whether a step's condition holds; when it does not, the step is skipped (or failed) here."""
        try:
            holds = condition.evaluate(context)
        except Exception as exc:  # a condition over odd data is the step's failure, not a crash
            self.stage(
                "step.failed",
                ev.StepFailed,
                step_id=step.id,
                attempt=0,
                error=f"condition {condition.text!r} cannot be evaluated: {exc}",
                on_failure=step.on_failure,
            )
            return False
        if not holds:
            self.stage("step.skipped", ev.StepSkipped, step_id=step.id, reason=f"condition false: {condition.text}")
            return False
        return True

    # -- one attempt --------------------------------------------------------------------------

    async def attempt(self, step: StepDefinition, action: Attempting, context: dict[str, Any]) -> None:
        acting: StepDefinition | CompensationDefinition = step
        if action.compensation and step.compensation is not None:
            acting = step.compensation
        key = f"{self.execution_id}:{step.id}" + (":compensate" if action.compensation else "")
        mapping = acting.input_map
        try:
            request = mapping.evaluate(context) if mapping is not None else None
        except Exception as exc:
            self.fail_attempt(step, action, f"input_map cannot be evaluated: {exc}", retryable=False)
            return
        runner = step_type(acting.type)
        if isinstance(action, Run):
            started_data: dict[str, Any] = {}
            if runner.waits:
                started_data["wait_until"] = time_after(_now(), acting.timeout_seconds)
                started_data["after_position"] = self.engine.view.position
            self.stage(
                "step.started",
                ev.StepStarted,
                step_id=step.id,
                attempt=action.attempt,
                idempotency_key=key,
                compensation=action.compensation,
                request=request,
                **started_data,
            )
        await self.flush()
        self.engine.stats.attempts += 1
        # Opened after step.started is durable, so a process killed during the attempt loses
        # only this span, never a parent that an exported span (that append's) points to.
        with _tracer.start_as_current_span(
            f"{'compensate' if action.compensation else 'step'} {step.id}",
            kind=SpanKind.CLIENT,
            attributes={
                "nexus.execution.id": self.execution_id,
                "nexus.workflow.id": self.state.workflow_id,
                "nexus.workflow.step": step.id,
                "nexus.workflow.step_type": acting.type,
                "nexus.workflow.attempt": action.attempt,
                "nexus.workflow.service": acting.service or "",
                "nexus.workflow.compensation": action.compensation,
                "nexus.workflow.resumed": isinstance(action, Resume),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            result = await self._attempt(step, action, acting, runner, request, key, context)
            span.set_attribute("nexus.workflow.outcome", result)
            if result in ("failed", "retrying"):
                span.set_status(StatusCode.ERROR)

    async def _attempt(
        self,
        step: StepDefinition,
        action: Attempting,
        acting: StepDefinition | CompensationDefinition,
        runner: StepType,
        request: Any,
        key: str,
        context: dict[str, Any],
    ) -> str:
        """Run one attempt inside its span; its outcome (completed, retrying, failed, interrupted)."""
        began = time.perf_counter()
        outcome = await runner.run(
            StepInput(
                step=step,
                acting=acting,
                compensation=action.compensation,
                attempt=action.attempt,
                request=request,
                idempotency_key=key,
                context=context,
                execution=self.state,
                traceparent=current_traceparent() or self.traceparent,
                wake=self.wake,
                runtime=self.engine,
            )
        )
        if outcome.interrupted:
            await self.adopt_latest()
            return "interrupted"
        if outcome.sent_at:
            self.engine.stats.record_dispatch((outcome.sent_at - self.ready_at) * 1000)
        duration = (time.perf_counter() - began) * 1000
        self.ready_at = time.perf_counter()
        metrics.observe_step(acting.service, acting.type, outcome.ok, duration / 1000)
        if outcome.ok:
            result = outcome.result
            if not action.compensation and step.output_map is not None:
                try:
                    result = step.output_map.evaluate(result)
                except Exception as exc:
                    return self.fail_attempt(step, action, f"output_map cannot be evaluated: {exc}", retryable=False)
            self.stage(
                "step.completed",
                ev.StepCompleted,
                step_id=step.id,
                attempt=action.attempt,
                output=result,
                duration_ms=round(duration, 3),
                compensation=action.compensation,
            )
            return "completed"
        return self.fail_attempt(step, action, outcome.error, retryable=outcome.retryable)

    def fail_attempt(self, step: StepDefinition, action: Attempting, error: str, *, retryable: bool) -> str:
        """Stage the attempt's failure: ``retrying`` (with its due time) or ``failed``; which one it was."""
        policy = step.compensation.retry if action.compensation and step.compensation else step.retry
        span = trace.get_current_span()
        if retryable and action.attempt < policy.max_attempts:
            delay = policy.delay_ms(action.attempt, self.engine.random.random()) / 1000
            retry_at = time_after(_now(), delay)
            span.add_event(
                "retry scheduled",
                {"nexus.workflow.retry_at": retry_at, "nexus.workflow.delay_seconds": delay, "error": error[:500]},
            )
            self.stage(
                "step.retrying",
                ev.StepRetrying,
                step_id=step.id,
                attempt=action.attempt,
                error=error,
                retry_at=retry_at,
                compensation=action.compensation,
            )
            return "retrying"
        if retryable:
            error = f"{error} (gave up after {action.attempt} attempts)"
        span.add_event("step failed", {"error": error[:500]})
        self.stage(
            "step.failed",
            ev.StepFailed,
            step_id=step.id,
            attempt=action.attempt,
            error=error,
            on_failure="fail" if action.compensation else step.on_failure,
            compensation=action.compensation,
        )
        return "failed"

    # -- waits and ends -----------------------------------------------------------------------

    async def sleep_until(self, until: datetime | None) -> None:
        if until is None:
            return
        deadline = parse_time(self.state.deadline) if self.state.deadline else None
        if deadline is not None and deadline < until:
            until = deadline
        remaining = (until - _now()).total_seconds()
        if remaining > 0:
            self.wake.clear()
            # The back-off wait (or the wait for a deadline) as a span of the execution's trace.
            with (
                _tracer.start_as_current_span(
                    "sleep",
                    attributes={
                        "nexus.execution.id": self.execution_id,
                        "nexus.workflow.until": until.isoformat(),
                        "nexus.workflow.seconds": round(remaining, 3),
                    },
                ),
                contextlib.suppress(TimeoutError),
            ):
                async with asyncio.timeout(remaining):
                    await self.wake.wait()
        await self.adopt_latest()

    async def adopt_latest(self) -> None:
        """Take in what others appended meanwhile (a cancel request), or stop if we lost the execution."""
        latest = self.engine.view.get(self.execution_id)
        if latest is not None and latest.version > self.state.version:
            if latest.owner != self.engine.replica_id or latest.incarnation != self.engine.incarnation:
                raise LostOwnership
            self.state = latest
            self.committed = latest.version

    def begin_compensation(self, action: Compensate) -> None:
        state = self.state
        error = state.error or ""
        if action.reason == "timed_out":
            error = error or f"execution passed its deadline {state.deadline}"
        _mark(
            "compensation",
            {
                "nexus.execution.id": self.execution_id,
                "nexus.workflow.id": state.workflow_id,
                "nexus.workflow.reason": action.reason,
                "nexus.workflow.steps": list(action.plan),
                "error": error[:500],
            },
        )
        if not action.plan:
            self.end(action.reason, error)
            return
        self.stage(
            "execution.compensating",
            ev.ExecutionCompensating,
            reason=action.reason,
            error=error,
            steps=list(action.plan),
        )

    def finish_compensation(self) -> None:
        status = final_status(self.state)
        failed = [sid for sid in self.state.compensation_plan if self.state.steps[sid].compensation_status == "failed"]
        error = self.state.error or ""
        if failed:
            error = f"{error}; compensation failed for {', '.join(failed)}".lstrip("; ")
        reason = {"CANCELLED": "cancelled", "TIMED_OUT": "timed_out"}.get(status, "failed")
        self.end(reason, error, compensated=status == "COMPENSATED")

    def end(self, reason: str, error: str, *, compensated: bool = False) -> None:
        state = self.state
        if reason == "cancelled":
            self.stage(
                "execution.cancelled",
                ev.ExecutionCancelled,
                workflow_id=state.workflow_id,
                reason=state.cancel_requested or "cancelled",
            )
        elif reason == "timed_out":
            self.stage(
                "execution.timed_out",
                ev.ExecutionTimedOut,
                workflow_id=state.workflow_id,
                deadline=state.deadline or "",
            )
        elif compensated:
            self.stage(
                "execution.compensated",
                ev.ExecutionCompensated,
                workflow_id=state.workflow_id,
                error=error,
                step_id=state.failed_step,
            )
        else:
            self.stage(
                "execution.failed",
                ev.ExecutionFailed,
                workflow_id=state.workflow_id,
                error=error or "failed",
                step_id=state.failed_step,
            )

    def complete(self) -> None:
        workflow = self.workflow
        assert workflow is not None
        state = self.state
        if workflow.output is not None:
            try:
                output = workflow.output.evaluate(context_of(state, workflow))
            except Exception as exc:
                self._output_failed(f"output cannot be evaluated: {exc}")
                return
        else:
            output = None
            for step in workflow.steps:
                if state.steps.get(step.id) and state.steps[step.id].status == "completed":
                    output = state.steps[step.id].output
        if workflow.output_schema_id:
            schema = self.engine.registry.get_schema(workflow.output_schema_id, tenant=state.workflow_tenant)
            problems = (
                [("$", f"output schema {workflow.output_schema_id!r} is not registered")]
                if schema is None
                else schema.errors(output, "$.output")
            )
            if problems:
                self._output_failed("output fails its schema: " + "; ".join(f"{p}: {m}" for p, m in problems))
                return
        self.stage("execution.completed", ev.ExecutionCompleted, workflow_id=state.workflow_id, output=output)

    def _output_failed(self, error: str) -> None:
        workflow = self.workflow
        assert workflow is not None
        self.state = with_changes(self.state, error=error)
        self.begin_compensation(Compensate("failed", compensation_plan(self.state, workflow)))
