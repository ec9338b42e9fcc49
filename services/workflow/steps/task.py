"""``type: task``: a command to a worker on ``nexus.cmd.<service>.<command>``; its result is an event."""

from __future__ import annotations

import time
from typing import ClassVar

from nexus.proto import CloudEvent, cmd_subject, encode_event, new_event
from nexus.services.workflow.definitions import StepKind
from nexus.services.workflow.steps._base import Outcome, StepInput, register
from nexus.services.workflow.steps._http import task_headers
from nexus.services.workflow.steps._waiting import wait_bounds, wait_for_any

__all__ = ["Task"]

SOURCE = "nexus/workflow"
_COMPLETED = "nexus.workflow.task.completed"
_FAILED = "nexus.workflow.task.failed"


@register
class Task:
    """Publishes the command (a CloudEvent, message id ``<key>:<attempt>``), then waits for
    ``nexus.workflow.task.completed`` or ``.failed`` carrying the same idempotency key, until the
    step's timeout (recorded in ``step.started``) or the execution's deadline."""

    kind: ClassVar[StepKind] = "task"
    waits: ClassVar[bool] = True

    async def run(self, attempt: StepInput) -> Outcome:
        runtime = attempt.runtime
        bus = runtime.bus
        if bus is None:
            return Outcome(False, error="task steps need the bus, and this service runs without one")
        service = attempt.acting.service
        command = attempt.acting.command
        key = attempt.idempotency_key
        execution = attempt.execution
        until, after = wait_bounds(attempt)
        # The worker acts for the execution's tenant only: the command says which (only platform
        # identities may publish on nexus.cmd.>, so the claim is the platform's, not the client's).
        tenant = execution.tenant
        command_event = new_event(
            f"nexus.{service}.task.{command}",
            {
                "execution_id": execution.execution_id,
                "step_id": attempt.step.id,
                "idempotency_key": key,
                "input": attempt.request,
            },
            source=SOURCE,
            subject=key,
            correlationid=execution.correlation_id or execution.execution_id,
            traceparent=attempt.traceparent,
            tenant=tenant,
        )
        sent = time.perf_counter()
        try:
            await bus.publish(
                cmd_subject(service, command),
                encode_event(command_event),
                msg_id=f"{key}:{attempt.attempt}",
                headers=task_headers(key, attempt.traceparent, tenant, execution.execution_id),
            )
        except Exception as exc:
            return Outcome(False, error=f"cannot send {cmd_subject(service, command)}: {exc}", retryable=True)

        def answers(event: CloudEvent) -> bool:
            return isinstance(event.data, dict) and event.data.get("idempotency_key") == key

        result = await wait_for_any(runtime, (_COMPLETED, _FAILED), answers, until, after)
        if result is None:
            return Outcome(False, error=f"no result for {key} by {until.isoformat()}", retryable=True, sent_at=sent)
        data = result.data if isinstance(result.data, dict) else {}
        if result.type == _COMPLETED:
            return Outcome(True, result=data.get("output"), sent_at=sent)
        return Outcome(
            False,
            error=str(data.get("error") or "the worker failed"),
            retryable=bool(data.get("retryable")),
            sent_at=sent,
        )
