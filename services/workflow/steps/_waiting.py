"""Waiting for an event of the log, for the step types that wait (``task``, ``wait_event``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from nexus.proto import CloudEvent
from nexus.services.workflow.handlers import parse_time
from nexus.services.workflow.steps._base import StepInput, StepRuntime

__all__ = ["wait_bounds", "wait_for_any", "wait_for_event"]


def wait_bounds(attempt: StepInput) -> tuple[datetime, int]:
    """Until when the attempt waits, and the log position it waits after.

    Both were recorded in its ``step.started`` (so a restarted replica resumes the same wait);
    the execution's deadline, if sooner, bounds it.
    """
    state = attempt.execution
    s = state.steps[attempt.step.id]
    timeout = attempt.acting.timeout_seconds
    until = parse_time(s.wait_until) if s.wait_until else datetime.fromtimestamp(time.time() + timeout, UTC)
    if state.deadline:
        until = min(until, parse_time(state.deadline))
    return until, s.after_position or 0


async def wait_for_event(
    runtime: StepRuntime, event_type: str, predicate: Callable[[CloudEvent], bool], until: datetime, after: int
) -> CloudEvent | None:
    """The first event of ``event_type`` after position ``after`` that matches, or None at ``until``."""
    view = runtime.view
    future = view.wait_for(event_type, lambda e: (e.position or 0) > after and predicate(e))
    try:
        # Events appended before the waiter was registered (also before a restart) are in the log.
        async for batch in runtime.log.iter_all(after + 1, types=[event_type]):
            for event in batch:
                if predicate(event):
                    return event
        remaining = (until - datetime.now(UTC)).total_seconds()
        if remaining <= 0:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                return await asyncio.shield(future)
        return None
    finally:
        future.cancel()


async def wait_for_any(
    runtime: StepRuntime,
    types: tuple[str, ...],
    predicate: Callable[[CloudEvent], bool],
    until: datetime,
    after: int,
) -> CloudEvent | None:
    """The first matching event of any of ``types``, or None at ``until``."""
    tasks = [asyncio.create_task(wait_for_event(runtime, t, predicate, until, after)) for t in types]
    try:
        for finished in asyncio.as_completed(tasks):
            event = await finished
            if event is not None:
                return event
        return None
    finally:
        for task in tasks:
            task.cancel()
