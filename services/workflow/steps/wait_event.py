"""``type: wait_event``: wait for an event of the log that matches; the event is the step's output."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import msgspec

from nexus.proto import PLATFORM_TENANT, CloudEvent
from nexus.services.workflow.definitions import StepKind
from nexus.services.workflow.steps._base import Outcome, StepInput, register
from nexus.services.workflow.steps._waiting import wait_bounds, wait_for_event

__all__ = ["WaitEvent"]


@register
class WaitEvent:
    """Waits for the first event of type ``event`` after the step started whose ``match``
    condition holds (over ``$.event`` and the context), until the step's timeout or the
    execution's deadline. A cancel request ends the wait at once, without an outcome."""

    kind: ClassVar[StepKind] = "wait_event"
    waits: ClassVar[bool] = True

    async def run(self, attempt: StepInput) -> Outcome:
        step = attempt.step
        until, after = wait_bounds(attempt)
        match = step.match
        context = attempt.context
        tenant = attempt.execution.tenant

        def predicate(event: CloudEvent) -> bool:
            # A client's execution waits only on its own tenant's events; the platform's on any.
            if tenant != PLATFORM_TENANT and event.tenant != tenant:
                return False
            if match is None:
                return True
            return match.evaluate({**context, "event": msgspec.to_builtins(event)})

        waiting = asyncio.create_task(wait_for_event(attempt.runtime, step.event, predicate, until, after))
        woken = asyncio.create_task(attempt.wake.wait())
        try:
            done, _ = await asyncio.wait({waiting, woken}, return_when=asyncio.FIRST_COMPLETED)
            if waiting in done:
                event = waiting.result()
                if event is None:
                    return Outcome(False, error=f"no {step.event} event matched by {until.isoformat()}")
                return Outcome(True, result=msgspec.to_builtins(event))
            # Cancelled: the wait ends without a result (nothing was sent); the driver re-decides.
            return Outcome(False, error="interrupted", interrupted=True)
        finally:
            waiting.cancel()
            woken.cancel()
