"""The executions view: every execution's state folded from the log, kept current by its tail.

Each replica holds one. It serves ``get``/``list``/``watch``, the queue (QUEUED executions by
priority), counts per workflow for ``max_concurrent``, replica heartbeats for take-overs, and
the waiters of ``wait_event`` / ``task`` steps. Events this replica appends are folded at once;
the same events coming back through the tail are recognised by their stream version and skipped.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nexus.atlas import Atlas
from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.replay import tail
from nexus.services.workflow.context import FINAL_STATUSES, TransitionCallback
from nexus.services.workflow.handlers import ExecutionState, apply, fold, parse_time, stream_id, with_changes

__all__ = ["EXECUTION_PREFIX", "ExecutionView"]

logger = logging.getLogger("nexus.workflow.view")

EXECUTION_PREFIX = "execution-"
HEARTBEAT = "nexus.workflow.replica.heartbeat"
ACTIVE = frozenset({"RUNNING", "COMPENSATING"})


def _with_position(state: ExecutionState, position: int) -> ExecutionState:
    return with_changes(state, position=position)


@dataclass
class _Waiter:
    predicate: Callable[[CloudEvent], bool]
    future: asyncio.Future[CloudEvent] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ExecutionView:
    """Executions, queue and replica liveness as this replica sees them."""

    def __init__(self, log: EventLog, atlas: Atlas | None = None) -> None:
        self.log = log
        self.states: dict[str, ExecutionState] = {}
        self.atlas = atlas or Atlas()
        self.executions = self.atlas.collection("executions")
        """Atlas collection ``executions``: one summary per execution (status, workflow, priority,
        order of arrival), indexed by status and workflow, for lists and filters."""
        self.executions.create_index("status")
        self.executions.create_index("workflow_id")
        self.executions.create_index("tenant")
        self._seq: dict[str, int] = {}
        self._order: builtins.list[str] = []
        self._queue: builtins.list[tuple[int, int, str]] = []
        self.active_by_workflow: Counter[str] = Counter()
        self.status_counts: Counter[str] = Counter()
        self.heartbeats: dict[str, tuple[str, float]] = {}
        """replica id → (incarnation, time of its last heartbeat as a POSIX timestamp)."""
        self._watchers: dict[str, set[asyncio.Queue[ExecutionState]]] = {}
        self._callbacks: builtins.list[TransitionCallback] = []
        self._waiters: dict[str, list[_Waiter]] = {}
        self.queue_changed = asyncio.Event()
        self.position = 0
        self._tail: asyncio.Task[None] | None = None
        self._other_listeners: builtins.list[Callable[[CloudEvent], None]] = []
        self._callback_tasks: set[asyncio.Future[Any]] = set()

    # -- building -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Fold the whole log (at start) up to its head; the tail takes over from there."""
        head = await self.log.head()
        async for batch in self.log.iter_all():
            for event in batch:
                if event.position and event.position > head:
                    break
                self.observe(event, notify=False)
        self.position = max(self.position, head)

    def start_tail(self) -> None:
        """Follow the log from where ``load`` stopped."""
        self._tail = asyncio.create_task(self._follow(), name="workflow-view-tail")

    async def stop(self) -> None:
        if self._tail is not None:
            self._tail.cancel()
            await asyncio.gather(self._tail, return_exceptions=True)
            self._tail = None

    async def _follow(self) -> None:
        # After a failure the tail resumes after what this view has folded (its own appends included).
        await tail(self.log, self.observe, start=lambda: self.position + 1, name="workflow view")

    def add_listener(self, listener: Callable[[CloudEvent], None]) -> None:
        """Call ``listener(event)`` for every event of the log this view sees (registrations, ...)."""
        self._other_listeners.append(listener)

    # -- folding ------------------------------------------------------------------------------

    def observe(self, event: CloudEvent, notify: bool = True) -> None:
        """Fold one event from the log (any stream)."""
        if event.position:
            self.position = max(self.position, event.position)
        stream = event.streamid or ""
        if stream.startswith(EXECUTION_PREFIX):
            self._apply_execution(stream[len(EXECUTION_PREFIX) :], event, notify)
        elif event.type == HEARTBEAT and isinstance(event.data, dict):
            try:
                at = parse_time(event.time).timestamp()
            except ValueError:
                return
            self.heartbeats[event.data.get("replica_id", "")] = (event.data.get("incarnation", ""), at)
        self._dispatch(event)

    def _dispatch(self, event: CloudEvent) -> None:
        """Hand a folded event to the log listeners and the waiters of its type."""
        for listener in self._other_listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("a log listener failed on %s", event.id)
        waiters = self._waiters.get(event.type)
        if waiters:
            for waiter in list(waiters):
                if waiter.future.done():
                    waiters.remove(waiter)
                    continue
                try:
                    matched = waiter.predicate(event)
                except Exception:
                    logger.exception("a wait predicate failed on %s", event.id)
                    matched = False
                if matched:
                    waiter.future.set_result(event)
                    waiters.remove(waiter)

    def apply_stored(self, events: builtins.list[CloudEvent]) -> ExecutionState | None:
        """Fold events this replica just appended (returned by ``append``); returns the new state."""
        state = None
        for event in events:
            self.observe(event)
        if events and events[0].streamid:
            state = self.states.get(events[0].streamid[len(EXECUTION_PREFIX) :])
        return state

    def apply_own(self, events: builtins.list[CloudEvent], states: builtins.list[ExecutionState]) -> None:
        """Fold events this replica just appended to one execution's stream, with the state after
        each as its driver already computed it (so they are not folded a second time).

        ``events`` are the stored events (``append``'s answer) and ``states[i]`` the state after
        ``events[i]`` as computed before the append: only the global position differs, and it is
        set here. An event the tail delivered first is skipped; after a gap (another replica's
        events not seen yet) the events are folded from the log as ``observe`` does.
        """
        for event, state in zip(events, states, strict=True):
            position = event.position or 0
            if position > self.position:
                self.position = position
            execution_id = state.execution_id
            before = self.states.get(execution_id)
            known = before.version if before else 0
            version = event.streamversion or known + 1
            if version != known + 1 or state.version != version:
                if version > known:
                    self._apply_execution(execution_id, event, True)
                self._dispatch(event)
                continue
            after = _with_position(state, position) if position else state
            self._store(execution_id, before, after)
            self._notify(after, event)
            self._dispatch(event)

    def _apply_execution(self, execution_id: str, event: CloudEvent, notify: bool) -> None:
        before = self.states.get(execution_id)
        known = before.version if before else 0
        version = event.streamversion or known + 1
        if version <= known:
            return
        if version != known + 1:
            # A gap (events appended by another replica not seen yet): refold from the log.
            task = asyncio.get_running_loop().create_task(self.refresh(execution_id))
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_tasks.discard)
            return
        after = apply(before, event)
        if not after.execution_id:
            after = ExecutionState(execution_id=execution_id) if before is None else after
        self._store(execution_id, before, after)
        if notify:
            self._notify(after, event)

    async def refresh(self, execution_id: str) -> ExecutionState | None:
        """Refold one execution from the log (after a gap or a lost race)."""
        events = await self.log.read_stream(stream_id(execution_id))
        current = self.states.get(execution_id)
        state = fold(events)
        if state is None or (current is not None and current.version >= state.version):
            return current
        start = current.version if current else 0
        self._store(execution_id, current, state)
        for event in events[start:]:
            self._notify(state, event)
        return state

    def _store(self, execution_id: str, before: ExecutionState | None, after: ExecutionState) -> None:
        if before is None:
            self._seq[execution_id] = len(self._order)
            self._order.append(execution_id)
        self.states[execution_id] = after
        old_status = before.status if before else None
        if old_status != after.status:
            self.executions.upsert(
                execution_id,
                {
                    "status": after.status,
                    "workflow_id": after.workflow_id,
                    "tenant": after.tenant,
                    "priority": after.priority,
                    "seq": self._seq[execution_id],
                },
            )
            if old_status:
                self.status_counts[old_status] -= 1
            self.status_counts[after.status] += 1
            if old_status in ACTIVE and after.status not in ACTIVE:
                self.active_by_workflow[after.workflow_key] -= 1
                self.queue_changed.set()
            if after.status in ACTIVE and old_status not in ACTIVE:
                self.active_by_workflow[after.workflow_key] += 1
            if after.status == "QUEUED":
                heapq.heappush(self._queue, (-after.priority, self._seq[execution_id], execution_id))
                self.queue_changed.set()

    def _notify(self, state: ExecutionState, event: CloudEvent) -> None:
        for queue in self._watchers.get(state.execution_id, ()):
            queue.put_nowait(state)
        for callback in self._callbacks:
            try:
                result = callback(state, event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._callback_tasks.add(task)
                    task.add_done_callback(self._callback_tasks.discard)
            except Exception:
                logger.exception("a transition callback failed")

    # -- queries ------------------------------------------------------------------------------

    def get(self, execution_id: str) -> ExecutionState | None:
        return self.states.get(execution_id)

    def list(
        self,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        tenant: str | None = None,
    ) -> builtins.list[ExecutionState]:
        """Executions newest first, from the Atlas collection (its indexes serve the filters);
        ``tenant`` keeps only that tenant's."""
        query = _filters(status, workflow_id, tenant)
        page = self.executions.query(query or None, sort="-seq", limit=limit, offset=offset)
        return [self.states[view.id] for view in page.views]

    def count(self, status: str | None = None, workflow_id: str | None = None, *, tenant: str | None = None) -> int:
        """How many executions match (for paging)."""
        return self.executions.count(_filters(status, workflow_id, tenant) or None)

    def queued(self) -> builtins.list[ExecutionState]:
        """QUEUED executions in the order they would start (highest priority, then oldest)."""
        return [self.states[i] for _, _, i in sorted(self._queue) if self.states[i].status == "QUEUED"]

    def pop_queued(self, admissible: Callable[[ExecutionState], bool]) -> ExecutionState | None:
        """The first QUEUED execution (priority, then age) that ``admissible`` accepts, removed from the heap.

        Entries refused (their workflow at ``max_concurrent``) stay queued for a later call.
        """
        refused: builtins.list[tuple[int, int, str]] = []
        found = None
        while self._queue:
            entry = heapq.heappop(self._queue)
            state = self.states.get(entry[2])
            if state is None or state.status != "QUEUED":
                continue
            if admissible(state):
                found = state
                break
            refused.append(entry)
        for entry in refused:
            heapq.heappush(self._queue, entry)
        return found

    def requeue(self, state: ExecutionState) -> None:
        """Put back an execution popped but not claimed (so it is tried again)."""
        heapq.heappush(self._queue, (-state.priority, self._seq[state.execution_id], state.execution_id))
        self.queue_changed.set()

    # -- subscriptions ------------------------------------------------------------------------

    def on_transition(self, callback: TransitionCallback) -> Callable[[], None]:
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    async def watch(self, execution_id: str) -> AsyncIterator[ExecutionState]:
        queue: asyncio.Queue[ExecutionState] = asyncio.Queue()
        self._watchers.setdefault(execution_id, set()).add(queue)
        try:
            state = self.states.get(execution_id)
            if state is None:
                state = await self.refresh(execution_id)
                if state is None:
                    return
            last_version = state.version
            yield state
            while state.status not in FINAL_STATUSES:
                state = await queue.get()
                if state.version <= last_version:
                    continue
                last_version = state.version
                yield state
        finally:
            watchers = self._watchers.get(execution_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[execution_id]

    def wait_for(self, event_type: str, predicate: Callable[[CloudEvent], bool]) -> asyncio.Future[CloudEvent]:
        """A future resolved with the next event of ``event_type`` this view sees that matches."""
        waiter = _Waiter(predicate)
        self._waiters.setdefault(event_type, []).append(waiter)
        return waiter.future

    def counts(self) -> dict[str, Any]:
        return {status: count for status, count in self.status_counts.items() if count}


def _filters(status: str | None, workflow_id: str | None, tenant: str | None) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for field_name, value in (("status", status), ("workflow_id", workflow_id), ("tenant", tenant)):
        if value is not None:
            query[field_name] = {"eq": value}
    return query
