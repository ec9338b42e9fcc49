"""The workflow engine: durable executions driven from the event log.

How an execution runs:

1. ``start`` validates the input and appends ``execution.queued`` to stream ``execution-<id>``
   (expected version 0, so one idempotency key makes one execution). The log is the durable
   queue: every replica folds it into its view and sees the QUEUED executions.
2. A replica's dispatcher takes the highest-priority QUEUED execution (then the oldest) when it
   has capacity (``NEXUS_WORKFLOW_CONCURRENCY``) and the workflow is under its
   ``max_concurrent``, and claims it by appending ``execution.claimed`` at the version it saw.
   Two replicas racing for one execution cannot both win: the loser's append fails. When the
   replica that receives a start has a free slot and sees nothing waiting in the queue, it
   would claim the new execution next anyway: it appends ``queued``, ``claimed`` and the
   first step's start in one append (the same history, one append and fsync fewer).
3. The owner drives it: each step attempt is recorded (``step.started``) before its request is
   sent, and its result (``step.completed`` / ``step.retrying`` with the due time /
   ``step.failed``) is appended, batched with the next step's start. Every append carries the
   version the owner last saw, so a replica that lost ownership stops at its next append.
4. Replicas beat a heartbeat into the log. Executions of a replica silent for the lease time
   are claimed by another; a replica restarted under the same id claims its own at once. A step
   started and never finished is sent again with the same idempotency key; back-off waits and
   deadlines are instants stored in events, so they survive restarts.

Priority semantics: strict within what a replica sees of the queue (its view of the log), so a
higher-priority execution starts before every lower-priority one that is still waiting when a
slot frees. Replicas share one queue; with several of them, each picks the best it sees, so
two executions of adjacent priority may start in either order within one fold's latency.
``max_concurrent`` counts RUNNING and COMPENSATING executions across replicas as each replica's
view sees them; two replicas claiming at the same instant can exceed it by one each, briefly.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec

from nexus.bus import Bus
from nexus.eventlog import ConcurrencyError, EventLog, EventTooLargeError
from nexus.proto import PLATFORM_TENANT, CloudEvent, RandomPool, cmd_subject, encode_event, new_event
from nexus.proto.events import workflow as ev
from nexus.services.workflow.context import TransitionCallback
from nexus.services.workflow.definitions import StepDefinition, WorkflowDefinition
from nexus.services.workflow.errors import (
    InactiveWorkflowError,
    InputValidationError,
    UnknownExecutionError,
    UnknownWorkflowError,
)
from nexus.services.workflow.handlers import (
    Action,
    ExecutionState,
    apply,
    context_of,
    final_status,
    fold,
    next_action,
    parse_time,
    stream_id,
    time_after,
)
from nexus.services.workflow.identity import ServiceIdentity
from nexus.services.workflow.registry import WorkflowRegistry
from nexus.services.workflow.steps import Outcome, call_http, fill_endpoint, task_headers, traceparent_for
from nexus.services.workflow.view import ACTIVE, ExecutionView

__all__ = ["EngineStats", "WorkflowEngine"]

logger = logging.getLogger("nexus.workflow.engine")

SOURCE = "nexus/workflow"
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c1b5e-8f7a-4c55-9a43-4b1f6f0e2d11")
_T = "nexus.workflow."


def _acting(step: StepDefinition, comp: Any) -> Any:
    """What an attempt runs: the step's compensation when it is compensating, else the step."""
    return step if comp is None else comp


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class EngineStats:
    """Counters and latencies the benchmark and /queue/stats read."""

    claimed: int = 0
    lost_races: int = 0
    takeovers: int = 0
    attempts: int = 0
    transitions: int = 0
    dispatch_ms: list[float] = field(default_factory=list)
    """Step ready → request sent, per attempt (the last 100,000)."""

    def record_dispatch(self, ms: float) -> None:
        self.dispatch_ms.append(ms)
        if len(self.dispatch_ms) > 100_000:
            del self.dispatch_ms[:50_000]


def _percentiles(values: list[float]) -> dict[str, float]:
    """p50/p99/max of ``values`` (nearest rank), rounded to microseconds; empty when there are none."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))], 3)

    return {"count": len(ordered), "p50": rank(50), "p99": rank(99), "max": round(ordered[-1], 3)}


_EVENT_OVERHEAD = 16 * 1024
"""Room an event needs beside a step's output (envelope, ids, hashes, the step's bookkeeping)."""


class _LostOwnership(Exception):
    """Another replica appended to the execution; this one stops driving it."""


class _AlreadyExists(Exception):
    """An execution started at once already existed (same idempotency key); nothing to drive."""


class WorkflowEngine:
    """Starts and drives executions (implements ``context.Engine``).

    Args:
        log: The event log.
        registry: Workflow and schema definitions.
        view: The executions view (shared with the API).
        services: Base URL of every service ``api_call`` steps may name.
        bus: For ``task`` steps (commands on ``nexus.cmd.<service>.<command>``); None disables them.
        replica_id: This replica's name.
        concurrency: Executions this replica drives at once.
        lease_seconds: Silence after which another replica takes a replica's executions over.
        http_connections: Connection pool size of the step client.
        platform_services: Names of ``services`` that are platform services: ``api_call`` steps
            present ``identity`` (the replica's worker token) to them, and to no other.
    """

    def __init__(
        self,
        log: EventLog,
        registry: WorkflowRegistry,
        view: ExecutionView,
        *,
        services: Mapping[str, str],
        bus: Bus | None = None,
        replica_id: str = "",
        concurrency: int = 256,
        lease_seconds: float = 10.0,
        http_connections: int = 200,
        platform_services: Collection[str] = (),
    ) -> None:
        self.log = log
        self.registry = registry
        self.view = view
        self.services = dict(services)
        self.bus = bus
        self.replica_id = replica_id or f"replica-{os.urandom(4).hex()}"
        self.incarnation = os.urandom(8).hex()
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.http_connections = http_connections
        self.max_output_bytes = max(1024, log.max_event_bytes - _EVENT_OVERHEAD)
        """The largest answer a step may return: its output must fit in one event of the log."""
        self.platform_services = frozenset(platform_services)
        self.identity: ServiceIdentity | None = None
        """The replica's worker token, set at start (``identity.ServiceIdentity``)."""
        self.stats = EngineStats()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._random = random.Random()
        self._ids = RandomPool()
        self._slot_freed = asyncio.Event()
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start_processing(self) -> None:
        """Start the dispatcher, the heartbeat and the take-over sweeper (the view must be loaded)."""
        if self._running:
            return
        self._running = True
        # One session for every step call, its pool kept warm across executions. No cookie jar:
        # a cookie one execution's service sets must not ride along on another's calls (and
        # the jar's filtering ran for every request).
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.http_connections, limit_per_host=self.http_connections),
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self.view.on_transition(self._on_transition)
        await self._heartbeat_once()
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="workflow-dispatch"),
            asyncio.create_task(self._heartbeat_loop(), name="workflow-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="workflow-sweep"),
        ]

    async def stop_processing(self) -> None:
        """Stop taking work and stop the drivers (their executions resume on the next start or elsewhere)."""
        self._running = False
        for task in [*self._tasks, *self._drivers.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._drivers.values(), return_exceptions=True)
        self._tasks.clear()
        self._drivers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def running_here(self) -> int:
        """Executions this replica is driving now."""
        return len(self._drivers)

    # -- public API ---------------------------------------------------------------------------

    def _workflow_for_start(self, workflow_id: str, tenant: str) -> WorkflowDefinition:
        workflow = self.registry.get_workflow(workflow_id, tenant=tenant)
        if workflow is None:
            raise UnknownWorkflowError(workflow_id)
        if not workflow.active:
            raise InactiveWorkflowError(workflow_id)
        return workflow

    def validate_input(self, workflow: WorkflowDefinition, input: Any, tenant: str = PLATFORM_TENANT) -> None:
        """Raise InputValidationError when ``input`` fails the workflow's input schema."""
        if workflow.input_schema_id:
            schema = self.registry.get_schema(workflow.input_schema_id, tenant=tenant)
            if schema is None:
                raise InputValidationError([("$", f"input schema {workflow.input_schema_id!r} is not registered")])
            problems = schema.errors(input, "$.input")
            if problems:
                raise InputValidationError(problems)

    async def start(
        self,
        workflow_id: str,
        input: Any,
        *,
        priority: int = 50,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        trigger: Mapping[str, Any] | None = None,
        tenant: str = PLATFORM_TENANT,
    ) -> str:
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise InputValidationError([("$.priority", f"must be an integer from 0 to 100, got {priority!r}")])
        workflow = self._workflow_for_start(workflow_id, tenant)
        workflow_tenant = self.registry.workflow_tenant(workflow_id, tenant) or PLATFORM_TENANT
        self.validate_input(workflow, input, tenant)
        if idempotency_key:
            # Keys are per tenant: another tenant's key never names (or reveals) this execution.
            scope = workflow_id if tenant == PLATFORM_TENANT else f"{tenant}\x00{workflow_id}"
            execution_id = str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{scope}\x00{idempotency_key}"))
            if execution_id in self.view.states:
                return execution_id
        else:
            execution_id = self._ids.event_id()
        event = new_event(
            _T + "execution.queued",
            ev.ExecutionQueued(
                execution_id=execution_id,
                workflow_id=workflow.id,
                workflow_version=workflow.version,
                input=input,
                priority=priority,
                idempotency_key=idempotency_key,
                provider_id=workflow.provider_id,
                trigger=dict(trigger) if trigger else None,
                tenant=tenant,
                workflow_tenant=workflow_tenant,
            ),
            source=SOURCE,
            id=self._ids.event_id(),
            subject=execution_id,
            correlationid=correlation_id or execution_id,
            causationid=causation_id,
            tenant=tenant,
        )
        if self._may_start_at_once(workflow, execution_id):
            return await self._start_at_once(event)
        try:
            stored = await self.log.append(stream_id(execution_id), [event], expected_version=0)
        except ConcurrencyError:
            return execution_id  # the same idempotency key: that execution already exists
        self.view.apply_stored(stored)
        return execution_id

    def _may_start_at_once(self, workflow: WorkflowDefinition, execution_id: str) -> bool:
        """Whether this replica would claim the new execution next anyway.

        True when it is processing, has a free slot, and no execution is waiting in the queue
        (so none of any priority would start before this one), and the workflow has no
        ``max_concurrent`` (whose count the dispatcher keeps).
        """
        return (
            self._running
            and len(self._drivers) < self.concurrency
            and not self.view.status_counts["QUEUED"]
            and workflow.max_concurrent is None
            and execution_id not in self._drivers
        )

    async def _start_at_once(self, queued: CloudEvent) -> str:
        """Queue and claim a new execution in one append, with its first step's start.

        The history is the same as through the queue (``execution.queued``, then
        ``execution.claimed`` by this replica), and the 202 still waits for ``queued`` to be
        durable; what is saved is one append and fsync per execution and the trip through
        the dispatcher. An existing execution with the same id (the same idempotency key)
        makes the append fail: the driver stops and the existing execution is the answer.
        """
        state = apply(None, queued)
        execution_id = state.execution_id
        driver = _Driver(self, state, committed=0)
        driver.pending.append(queued)
        driver.pending_states.append(state)
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        driver.first_append = first
        self._spawn(state, takeover=False, driver=driver)
        await asyncio.shield(first)
        return execution_id

    def get(self, execution_id: str) -> ExecutionState | None:
        return self.view.get(execution_id)

    async def load(self, execution_id: str) -> ExecutionState | None:
        return fold(await self.log.read_stream(stream_id(execution_id)))

    async def tenant_of(self, execution_id: str) -> str | None:
        """The tenant that owns the execution, or None when there is no such execution."""
        state = self.get(execution_id) or await self.load(execution_id)
        return state.tenant if state is not None else None

    async def history(self, execution_id: str) -> builtins.list[CloudEvent]:
        return await self.log.read_stream(stream_id(execution_id))

    async def cancel(self, execution_id: str, reason: str = "cancelled") -> ExecutionState:
        for _ in range(20):
            events = await self.log.read_stream(stream_id(execution_id))
            state = fold(events)
            if state is None:
                raise UnknownExecutionError(execution_id)
            if state.final or state.cancel_requested:
                return state
            if state.status == "QUEUED":
                # Not started: nothing to compensate; it ends here.
                to_append = [
                    self._event(state, "execution.cancel_requested", ev.ExecutionCancelRequested, reason=reason),
                    self._event(
                        state,
                        "execution.cancelled",
                        ev.ExecutionCancelled,
                        workflow_id=state.workflow_id,
                        reason=reason,
                    ),
                ]
            else:
                to_append = [
                    self._event(state, "execution.cancel_requested", ev.ExecutionCancelRequested, reason=reason)
                ]
            try:
                stored = await self.log.append(stream_id(execution_id), to_append, expected_version=state.version)
            except ConcurrencyError:
                continue
            new_state = self.view.apply_stored(stored) or fold([*events, *stored])
            wake = self._wake.get(execution_id)
            if wake is not None:
                wake.set()
            assert new_state is not None
            return new_state
        raise RuntimeError(f"execution {execution_id} changes too fast to cancel; try again")

    def list(
        self,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        tenant: str | None = None,
    ) -> builtins.list[ExecutionState]:
        return self.view.list(status=status, workflow_id=workflow_id, limit=limit, offset=offset, tenant=tenant)

    def watch(self, execution_id: str) -> AsyncIterator[ExecutionState]:
        return self.view.watch(execution_id)

    def on_transition(self, callback: TransitionCallback) -> Callable[[], None]:
        return self.view.on_transition(callback)

    def queue_stats(self, tenant: str | None = None) -> dict[str, Any]:
        """What the queue and this replica are doing (``GET /queue/stats``).

        With ``tenant``, only that tenant's executions are counted and the replicas' own
        figures are left out; None (an admin) sees everything.
        """
        queued = [s for s in self.view.queued() if tenant is None or s.tenant == tenant]
        by_priority: dict[int, int] = {}
        for state in queued:
            by_priority[state.priority] = by_priority.get(state.priority, 0) + 1
        body: dict[str, Any] = {
            "queued": len(queued),
            "queued_by_priority": {str(p): n for p, n in sorted(by_priority.items(), reverse=True)},
            "next": [s.execution_id for s in queued[:10]],
        }
        if tenant is not None:
            mine = [s for s in self.view.states.values() if s.tenant == tenant]
            body["statuses"] = dict(Counter(s.status for s in mine))
            body["active_by_workflow"] = dict(Counter(s.workflow_id for s in mine if s.status in ACTIVE))
            return body
        now = time.time()
        return {
            **body,
            "statuses": self.view.counts(),
            "active_by_workflow": {w: n for w, n in self.view.active_by_workflow.items() if n},
            "replica": {
                "id": self.replica_id,
                "incarnation": self.incarnation,
                "running": self.running_here,
                "concurrency": self.concurrency,
                "lease_seconds": self.lease_seconds,
            },
            "replicas": {
                rid: {"last_heartbeat_seconds_ago": round(now - at, 3), "alive": now - at < self.lease_seconds}
                for rid, (_inc, at) in sorted(self.view.heartbeats.items())
            },
            "stats": {
                "dispatch_ms": _percentiles(self.stats.dispatch_ms),
                "claimed": self.stats.claimed,
                "lost_races": self.stats.lost_races,
                "takeovers": self.stats.takeovers,
                "attempts": self.stats.attempts,
                "transitions": self.stats.transitions,
            },
        }

    # -- dispatching --------------------------------------------------------------------------

    def _on_transition(self, state: ExecutionState, event: CloudEvent) -> None:
        if event.type == _T + "execution.cancel_requested":
            wake = self._wake.get(state.execution_id)
            if wake is not None:
                wake.set()
        # Another replica claimed one of ours: stop driving it.
        if event.type == _T + "execution.claimed" and state.execution_id in self._drivers:
            if state.owner != self.replica_id or state.incarnation != self.incarnation:
                self._drivers[state.execution_id].cancel()

    def _admissible(self, state: ExecutionState) -> bool:
        workflow = self.registry.get_workflow(state.workflow_id, state.workflow_version, tenant=state.workflow_tenant)
        limit = workflow.max_concurrent if workflow else None
        return limit is None or self.view.active_by_workflow[state.workflow_key] < limit

    async def _dispatch_loop(self) -> None:
        while self._running:
            if len(self._drivers) >= self.concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            state = self.view.pop_queued(self._admissible)
            if state is None:
                self.view.queue_changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.view.queue_changed.wait()
                continue
            if state.execution_id in self._drivers:
                continue
            self._spawn(state, takeover=False)
            # Let the driver append its claim before the next pick, so counts stay right.
            await asyncio.sleep(0)

    def _spawn(self, state: ExecutionState, *, takeover: bool, driver: _Driver | None = None) -> None:
        task = asyncio.create_task(
            self._drive(driver or _Driver(self, state), takeover), name=f"execution-{state.execution_id}"
        )
        self._drivers[state.execution_id] = task

        def done(_t: asyncio.Task[None], execution_id: str = state.execution_id) -> None:
            if self._drivers.get(execution_id) is _t:
                del self._drivers[execution_id]
            self._wake.pop(execution_id, None)
            self._slot_freed.set()
            self.view.queue_changed.set()

        task.add_done_callback(done)

    async def _heartbeat_once(self) -> None:
        event = new_event(
            _T + "replica.heartbeat",
            ev.ReplicaHeartbeat(
                replica_id=self.replica_id,
                incarnation=self.incarnation,
                lease_seconds=self.lease_seconds,
                running=self.running_here,
            ),
            source=SOURCE,
        )
        stored = await self.log.append(f"workflow-replica-{self.replica_id}", [event])
        for e in stored:
            self.view.observe(e)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("heartbeat failed")

    def orphans(self, now: float | None = None) -> builtins.list[ExecutionState]:
        """Unfinished executions this replica should take over: its own from an earlier
        incarnation, and those of replicas silent for the lease time."""
        now = time.time() if now is None else now
        out = []
        for state in self.view.states.values():
            if state.status not in ("RUNNING", "COMPENSATING") or state.execution_id in self._drivers:
                continue
            if state.owner == self.replica_id:
                # Ours from an earlier incarnation, or ours and its driver stopped on an error.
                out.append(state)
                continue
            beat = self.view.heartbeats.get(state.owner or "")
            if beat is None or now - beat[1] > self.lease_seconds:
                out.append(state)
        return out

    async def _sweep_loop(self) -> None:
        while True:
            try:
                for state in self.orphans():
                    if len(self._drivers) >= self.concurrency:
                        break
                    self._spawn(state, takeover=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the take-over sweep failed")
            await asyncio.sleep(min(1.0, self.lease_seconds / 4))

    # -- driving ------------------------------------------------------------------------------

    def _event(self, state: ExecutionState, kind: str, struct: type[msgspec.Struct], **data: Any) -> CloudEvent:
        return new_event(
            _T + kind,
            struct(execution_id=state.execution_id, **data),
            source=SOURCE,
            id=self._ids.event_id(),
            subject=state.execution_id,
            correlationid=state.correlation_id or state.execution_id,
            tenant=state.tenant,
        )

    async def _drive(self, driver: _Driver, takeover: bool) -> None:
        try:
            await driver.run(takeover)
        except _AlreadyExists:
            pass
        except _LostOwnership:
            self.stats.lost_races += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            first = driver.first_append
            if first is not None and not first.done():
                # Started at once and nothing was appended: the caller of start() gets the error.
                first.set_exception(exc)
                return
            # The sweeper drives it again (a fresh claim makes the retry visible in the history).
            logger.exception("driving execution %s failed; it resumes on the next sweep", driver.execution_id)
            await asyncio.sleep(1)
        finally:
            first = driver.first_append
            if first is not None and not first.done():
                first.cancel()


class _Driver:
    """Drives one execution; every transition goes through ``stage`` and ``flush``."""

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
        engine._wake[state.execution_id] = self.wake
        self.workflow: WorkflowDefinition | None = None
        self.traceparent = traceparent_for(state.execution_id, engine._ids.hex)
        self.ready_at = time.perf_counter()

    def stage(self, kind: str, struct: type[msgspec.Struct], **data: Any) -> None:
        event = self.engine._event(self.state, kind, struct, **data)
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
                    raise _AlreadyExists from None
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
                    raise _LostOwnership from None
                rebased = latest
                states = []
                for event in events:
                    rebased = apply(rebased, event)
                    states.append(rebased)
                self.state = rebased
                self.committed = latest.version
        self.committed = stored[-1].streamversion or self.committed + len(stored)
        self.engine.stats.transitions += len(stored)
        self.engine.view.apply_own(stored, states)
        if self.first_append is not None and not self.first_append.done():
            self.first_append.set_result(None)

    async def _failed_too_large(self, exc: EventTooLargeError) -> tuple[list[CloudEvent], list[ExecutionState]]:
        latest = await self.engine.view.refresh(self.execution_id) or fold(
            await self.engine.log.read_stream(self.stream)
        )
        if latest is None or latest.final:
            raise _LostOwnership from None
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
        else:
            engine.stats.claimed += 1
        self.ready_at = time.perf_counter()
        while True:
            action = next_action(self.state, self.workflow, _now())
            if action.kind == "none":
                await self.flush()
                return
            await self.perform(action)
            if self.state.final:
                await self.flush()
                return

    async def perform(self, action: Action) -> None:
        workflow = self.workflow
        assert workflow is not None
        if action.kind == "sleep":
            await self.flush()
            await self.sleep_until(action.until)
            return
        if action.kind == "compensate":
            self.begin_compensation(action)
            return
        if action.kind == "final":
            self.finish_compensation()
            return
        if action.kind == "finish":
            self.complete()
            return
        step = action.step
        assert step is not None
        context = context_of(self.state, workflow)
        if action.kind == "run" and not action.compensation and action.attempt == 1 and step.condition is not None:
            try:
                holds = step.condition.evaluate(context)
            except Exception as exc:  # a condition over odd data is the step's failure, not a crash
                self.stage(
                    "step.failed",
                    ev.StepFailed,
                    step_id=step.id,
                    attempt=0,
                    error=f"condition {step.condition.text!r} cannot be evaluated: {exc}",
                    on_failure=step.on_failure,
                )
                return
            if not holds:
                self.stage(
                    "step.skipped", ev.StepSkipped, step_id=step.id, reason=f"condition false: {step.condition.text}"
                )
                return
        await self.attempt(step, action, context)

    # -- one attempt --------------------------------------------------------------------------

    async def attempt(self, step: StepDefinition, action: Action, context: dict[str, Any]) -> None:
        comp = step.compensation if action.compensation else None
        key = f"{self.execution_id}:{step.id}" + (":compensate" if action.compensation else "")
        mapping = _acting(step, comp).input_map
        try:
            request = mapping.evaluate(context) if mapping is not None else None
        except Exception as exc:
            self.fail_attempt(step, action, f"input_map cannot be evaluated: {exc}", retryable=False)
            return
        started_data: dict[str, Any] = {}
        step_type = _acting(step, comp).type
        if step_type in ("wait_event", "task") and action.kind == "run":
            timeout = _acting(step, comp).timeout_seconds
            started_data["wait_until"] = time_after(_now(), timeout)
            started_data["after_position"] = self.engine.view.position
        if action.kind == "run":
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
        began = time.perf_counter()
        if step_type == "api_call":
            outcome = await self.run_api_call(step, comp, request, key)
        elif step_type == "task":
            outcome = await self.run_task(step, comp, request, key, action)
        else:
            outcome = await self.run_wait(step, context)
        if outcome.interrupted:
            await self.adopt_latest()
            return
        if outcome.sent_at:
            self.engine.stats.record_dispatch((outcome.sent_at - self.ready_at) * 1000)
        duration = (time.perf_counter() - began) * 1000
        self.ready_at = time.perf_counter()
        if outcome.ok:
            result = outcome.result
            if not action.compensation and step.output_map is not None:
                try:
                    result = step.output_map.evaluate(result)
                except Exception as exc:
                    self.fail_attempt(step, action, f"output_map cannot be evaluated: {exc}", retryable=False)
                    return
            self.stage(
                "step.completed",
                ev.StepCompleted,
                step_id=step.id,
                attempt=action.attempt,
                output=result,
                duration_ms=round(duration, 3),
                compensation=action.compensation,
            )
            return
        self.fail_attempt(step, action, outcome.error, retryable=outcome.retryable)

    def fail_attempt(self, step: StepDefinition, action: Action, error: str, *, retryable: bool) -> None:
        policy = step.compensation.retry if action.compensation and step.compensation else step.retry
        if retryable and action.attempt < policy.max_attempts:
            delay = policy.delay_ms(action.attempt, self.engine._random.random()) / 1000
            self.stage(
                "step.retrying",
                ev.StepRetrying,
                step_id=step.id,
                attempt=action.attempt,
                error=error,
                retry_at=time_after(_now(), delay),
                compensation=action.compensation,
            )
            return
        if retryable:
            error = f"{error} (gave up after {action.attempt} attempts)"
        self.stage(
            "step.failed",
            ev.StepFailed,
            step_id=step.id,
            attempt=action.attempt,
            error=error,
            on_failure="fail" if action.compensation else step.on_failure,
            compensation=action.compensation,
        )

    async def run_api_call(self, step: StepDefinition, comp: Any, request: Any, key: str) -> Outcome:
        service = _acting(step, comp).service
        base = self.engine.services.get(service)
        if base is None:
            return Outcome(False, error=f"service {service!r} has no URL (set NEXUS_SERVICE_{service.upper()})")
        endpoint, missing = fill_endpoint(_acting(step, comp).endpoint, request, self.state.input)
        if missing:
            return Outcome(False, error=f"endpoint placeholders without a value: {', '.join(missing)}")
        method = _acting(step, comp).method
        timeout = _acting(step, comp).timeout_seconds
        assert self.engine._session is not None
        identity = self.engine.identity
        # A platform service gets a token delegated from the execution's tenant (never the
        # replica's own token): it applies that tenant's permissions. An external service gets none.
        credentials = None
        if identity is not None and service in self.engine.platform_services:
            tenant = self.state.tenant
            credentials = identity.step_headers(tenant, self.execution_id, service)
        outcome = await call_http(
            self.engine._session,
            method,
            base + endpoint,
            request,
            idempotency_key=key,
            traceparent=self.traceparent,
            timeout=timeout,
            headers=credentials,
            max_bytes=self.engine.max_output_bytes,
        )
        if not outcome.ok and outcome.error:
            # The step names a service, not a URL: say which one failed.
            outcome = dataclasses.replace(outcome, error=f"service {service!r}: {outcome.error}")
        return outcome

    def _wait_bounds(self, step: StepDefinition, comp: Any) -> tuple[datetime, int]:
        s = self.state.steps[step.id]
        timeout = _acting(step, comp).timeout_seconds
        until = parse_time(s.wait_until) if s.wait_until else datetime.fromtimestamp(time.time() + timeout, UTC)
        if self.state.deadline:
            until = min(until, parse_time(self.state.deadline))
        return until, s.after_position or 0

    async def _wait_event(
        self, event_type: str, predicate: Callable[[CloudEvent], bool], until: datetime, after: int
    ) -> CloudEvent | None:
        """The first event of ``event_type`` after position ``after`` that matches, or None at ``until``."""
        view = self.engine.view
        future = view.wait_for(event_type, lambda e: (e.position or 0) > after and predicate(e))
        try:
            # Events appended before the waiter was registered (also before a restart) are in the log.
            async for batch in self.engine.log.iter_all(after + 1, types=[event_type]):
                for event in batch:
                    if predicate(event):
                        return event
            remaining = (until - _now()).total_seconds()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    return await asyncio.shield(future)
            return None
        finally:
            future.cancel()

    async def run_task(self, step: StepDefinition, comp: Any, request: Any, key: str, action: Action) -> Outcome:
        bus = self.engine.bus
        if bus is None:
            return Outcome(False, error="task steps need the bus, and this service runs without one")
        service = _acting(step, comp).service
        command = _acting(step, comp).command
        until, after = self._wait_bounds(step, comp)
        # The worker acts for the execution's tenant only: the command says which (only platform
        # identities may publish on nexus.cmd.>, so the claim is the platform's, not the client's).
        tenant = self.state.tenant
        command_event = new_event(
            f"nexus.{service}.task.{command}",
            {"execution_id": self.execution_id, "step_id": step.id, "idempotency_key": key, "input": request},
            source=SOURCE,
            subject=key,
            correlationid=self.state.correlation_id or self.execution_id,
            traceparent=self.traceparent,
            tenant=tenant,
        )
        sent = time.perf_counter()
        try:
            await bus.publish(
                cmd_subject(service, command),
                encode_event(command_event),
                msg_id=f"{key}:{action.attempt}",
                headers=task_headers(key, self.traceparent, tenant, self.execution_id),
            )
        except Exception as exc:
            return Outcome(False, error=f"cannot send {cmd_subject(service, command)}: {exc}", retryable=True)
        result = await self._wait_event_any(
            (_T + "task.completed", _T + "task.failed"),
            lambda e: isinstance(e.data, dict) and e.data.get("idempotency_key") == key,
            until,
            after,
        )
        if result is None:
            return Outcome(False, error=f"no result for {key} by {until.isoformat()}", retryable=True, sent_at=sent)
        if result.type == _T + "task.completed":
            return Outcome(True, result=result.data.get("output"), sent_at=sent)
        return Outcome(
            False,
            error=str(result.data.get("error") or "the worker failed"),
            retryable=bool(result.data.get("retryable")),
            sent_at=sent,
        )

    async def _wait_event_any(
        self, types: tuple[str, ...], predicate: Callable[[CloudEvent], bool], until: datetime, after: int
    ) -> CloudEvent | None:
        tasks = [asyncio.create_task(self._wait_event(t, predicate, until, after)) for t in types]
        try:
            for finished in asyncio.as_completed(tasks):
                event = await finished
                if event is not None:
                    return event
            return None
        finally:
            for task in tasks:
                task.cancel()

    async def run_wait(self, step: StepDefinition, context: dict[str, Any]) -> Outcome:
        until, after = self._wait_bounds(step, None)
        match = step.match

        tenant = self.state.tenant

        def predicate(event: CloudEvent) -> bool:
            # A client's execution waits only on its own tenant's events; the platform's on any.
            if tenant != PLATFORM_TENANT and event.tenant != tenant:
                return False
            if match is None:
                return True
            return match.evaluate({**context, "event": msgspec.to_builtins(event)})

        waiting = asyncio.create_task(self._wait_event(step.event, predicate, until, after))
        woken = asyncio.create_task(self.wake.wait())
        try:
            done, _ = await asyncio.wait({waiting, woken}, return_when=asyncio.FIRST_COMPLETED)
            if waiting in done:
                event = waiting.result()
                if event is None:
                    return Outcome(False, error=f"no {step.event} event matched by {until.isoformat()}")
                return Outcome(True, result=msgspec.to_builtins(event))
            # Cancelled: the wait ends without a result (nothing was sent); the caller re-decides.
            return Outcome(False, error="interrupted", interrupted=True)
        finally:
            waiting.cancel()
            woken.cancel()

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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.wake.wait()
        await self.adopt_latest()

    async def adopt_latest(self) -> None:
        """Take in what others appended meanwhile (a cancel request), or stop if we lost the execution."""
        latest = self.engine.view.get(self.execution_id)
        if latest is not None and latest.version > self.state.version:
            if latest.owner != self.engine.replica_id or latest.incarnation != self.engine.incarnation:
                raise _LostOwnership
            self.state = latest
            self.committed = latest.version

    def begin_compensation(self, action: Action) -> None:
        state = self.state
        error = state.error or ""
        if action.reason == "timed_out":
            error = error or f"execution passed its deadline {state.deadline}"
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
        from nexus.services.workflow.handlers import compensation_plan

        workflow = self.workflow
        assert workflow is not None
        self.state = _with_error(self.state, error)
        self.begin_compensation(Action("compensate", reason="failed", plan=compensation_plan(self.state, workflow)))


def _with_error(state: ExecutionState, error: str) -> ExecutionState:
    import dataclasses

    return dataclasses.replace(state, error=error)
