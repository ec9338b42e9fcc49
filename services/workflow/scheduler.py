"""Scheduling on one replica: which executions it drives, when, and for how long it may.

- The dispatcher takes the highest-priority QUEUED execution (then the oldest) when the replica
  has capacity (``concurrency``) and the workflow is under its ``max_concurrent``, and hands it
  to a driver, whose first append (``execution.claimed`` at the version it saw) claims it; two
  replicas racing for one execution cannot both win.
- The heartbeat appends ``replica.heartbeat`` every third of the lease.
- The sweeper takes over the unfinished executions of replicas silent for the lease time, and
  this replica's own from an earlier incarnation (a restart under the same id) at once; an
  execution that has used up its ``max_retries`` (dispatches after the first) ends FAILED instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import TYPE_CHECKING

from nexus.eventlog import ConcurrencyError
from nexus.obs import CORRELATION_ID
from nexus.proto import CloudEvent, new_event
from nexus.proto.events import workflow as ev
from nexus.services.workflow import metrics
from nexus.services.workflow.definitions import WorkflowDefinition
from nexus.services.workflow.driver import SOURCE, Driver, execution_event
from nexus.services.workflow.handlers import ExecutionState, stream_id

if TYPE_CHECKING:
    from nexus.services.workflow.engine import WorkflowEngine

__all__ = ["Scheduler"]

logger = logging.getLogger("nexus.workflow.engine")

_T = "nexus.workflow."


class Scheduler:
    """The dispatcher, the heartbeat and the take-over sweeper of one replica, and its drivers."""

    def __init__(self, engine: WorkflowEngine) -> None:
        self.engine = engine
        self.running = False
        self.drivers: dict[str, asyncio.Task[None]] = {}
        """The task driving each execution this replica drives now, by execution id."""
        self.wakes: dict[str, asyncio.Event] = {}
        """Each driven execution's wake-up (set on a cancel request)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._slot_freed = asyncio.Event()

    async def start(self) -> None:
        """Beat once, then start the dispatcher, the heartbeat and the sweeper."""
        self.running = True
        self.engine.view.on_transition(self._on_transition)
        await self.heartbeat_once()
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="workflow-dispatch"),
            asyncio.create_task(self._heartbeat_loop(), name="workflow-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="workflow-sweep"),
        ]

    async def stop(self) -> None:
        """Stop taking work and stop the drivers (their executions resume on the next start or elsewhere)."""
        self.running = False
        for task in [*self._tasks, *self.drivers.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self.drivers.values(), return_exceptions=True)
        self._tasks.clear()
        self.drivers.clear()

    def has_free_slot_now(self, workflow: WorkflowDefinition, execution_id: str) -> bool:
        """Whether this replica would claim a new execution of ``workflow`` next anyway.

        True when it is processing, has a free slot, and no execution is waiting in the queue
        (so none of any priority would start before this one), and the workflow has no
        ``max_concurrent`` (whose count the dispatcher keeps).
        """
        return (
            self.running
            and len(self.drivers) < self.engine.concurrency
            and not self.engine.view.status_counts["QUEUED"]
            and workflow.max_concurrent is None
            and execution_id not in self.drivers
        )

    def wake(self, execution_id: str) -> None:
        """Wake the driver of ``execution_id`` (if this replica drives it) to re-decide at once."""
        wake = self.wakes.get(execution_id)
        if wake is not None:
            wake.set()

    def spawn(self, state: ExecutionState, *, takeover: bool, driver: Driver | None = None) -> None:
        """Drive ``state``'s execution in a task of its own (with ``driver`` when one is prepared)."""
        driver = driver or Driver(self.engine, state)
        self.wakes[state.execution_id] = driver.wake
        # The driver works for its execution, not for whoever woke the dispatcher: its log lines
        # and the events it builds carry the execution's correlation id.
        context = contextvars.copy_context()
        context.run(CORRELATION_ID.set, state.correlation_id or state.execution_id)
        task = asyncio.create_task(driver.drive(takeover), name=f"execution-{state.execution_id}", context=context)
        self.drivers[state.execution_id] = task

        def done(_t: asyncio.Task[None], execution_id: str = state.execution_id) -> None:
            if self.drivers.get(execution_id) is _t:
                del self.drivers[execution_id]
            self.wakes.pop(execution_id, None)
            self._slot_freed.set()
            self.engine.view.queue_changed.set()

        task.add_done_callback(done)

    # -- dispatching --------------------------------------------------------------------------

    def _on_transition(self, state: ExecutionState, event: CloudEvent) -> None:
        if event.type == _T + "execution.cancel_requested":
            self.wake(state.execution_id)
        # Another replica claimed one of ours: stop driving it.
        if event.type == _T + "execution.claimed" and state.execution_id in self.drivers:
            if state.owner != self.engine.replica_id or state.incarnation != self.engine.incarnation:
                self.drivers[state.execution_id].cancel()

    def _admissible(self, state: ExecutionState) -> bool:
        engine = self.engine
        workflow = engine.registry.get_workflow(state.workflow_id, state.workflow_version, tenant=state.workflow_tenant)
        limit = workflow.max_concurrent if workflow else None
        return limit is None or engine.view.active_by_workflow[state.workflow_key] < limit

    async def _dispatch_loop(self) -> None:
        view = self.engine.view
        while self.running:
            if len(self.drivers) >= self.engine.concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            state = view.pop_queued(self._admissible)
            if state is None:
                view.queue_changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await view.queue_changed.wait()
                continue
            if state.execution_id in self.drivers:
                continue
            self.spawn(state, takeover=False)
            # Let the driver append its claim before the next pick, so counts stay right.
            await asyncio.sleep(0)

    # -- leases -------------------------------------------------------------------------------

    async def heartbeat_once(self) -> None:
        engine = self.engine
        event = new_event(
            _T + "replica.heartbeat",
            ev.ReplicaHeartbeat(
                replica_id=engine.replica_id,
                incarnation=engine.incarnation,
                lease_seconds=engine.lease_seconds,
                running=len(self.drivers),
            ),
            source=SOURCE,
        )
        stored = await engine.log.append(f"workflow-replica-{engine.replica_id}", [event])
        for e in stored:
            engine.view.observe(e)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.engine.lease_seconds / 3)
            try:
                await self.heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("heartbeat failed")

    def orphans(self, now: float | None = None) -> list[ExecutionState]:
        """Unfinished executions this replica should take over: its own from an earlier
        incarnation, and those of replicas silent for the lease time."""
        engine = self.engine
        now = time.time() if now is None else now
        out = []
        for state in engine.view.states.values():
            if state.status not in ("RUNNING", "COMPENSATING") or state.execution_id in self.drivers:
                continue
            if state.owner == engine.replica_id:
                # Ours from an earlier incarnation, or ours and its driver stopped on an error.
                out.append(state)
                continue
            beat = engine.view.heartbeats.get(state.owner or "")
            if beat is None or now - beat[1] > engine.lease_seconds:
                out.append(state)
        return out

    async def give_up(self, state: ExecutionState) -> None:
        """End an execution that was dispatched again ``max_retries`` times: FAILED, saying why.

        The failure is appended at the version the view saw, so an execution that moved on
        meanwhile (another replica drives it, it finished) is left alone.
        """
        error = (
            f"dispatched {state.claims} times: its driver stopped without finishing it each time, and "
            f"max_retries is {state.max_retries}; not retried again"
        )
        event = execution_event(
            self.engine.ids,
            state,
            "execution.failed",
            ev.ExecutionFailed,
            workflow_id=state.workflow_id,
            error=error,
            step_id=state.current_step,
        )
        try:
            stored = await self.engine.log.append(
                stream_id(state.execution_id), [event], expected_version=state.version
            )
        except ConcurrencyError:
            return
        metrics.count_stored(stored, None)
        self.engine.view.apply_stored(stored)
        logger.warning(
            "execution %s failed: %s", state.execution_id, error, extra={"correlation_id": state.correlation_id}
        )

    async def _sweep_loop(self) -> None:
        while True:
            try:
                for state in self.orphans():
                    if state.max_retries is not None and state.retry_count >= state.max_retries:
                        await self.give_up(state)
                        continue
                    if len(self.drivers) >= self.engine.concurrency:
                        break
                    self.spawn(state, takeover=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the take-over sweep failed")
            await asyncio.sleep(min(1.0, self.engine.lease_seconds / 4))
