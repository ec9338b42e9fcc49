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

The code follows that split: this module is the client-facing API (start, cancel, get, list,
watch, the queue's figures); ``scheduler.py`` dispatches, beats the heartbeat and sweeps the
leases; ``driver.py`` drives one execution; ``steps/`` holds one module per step type,
registered by its kind; ``handlers.py`` is the pure fold and the decisions.

Retries of the queue (seed 004's ``QueuedExecution`` fields): an execution is dispatched again
when its driver stopped without finishing it (its replica died or restarted, or the driver
failed); each dispatch is an ``execution.claimed`` event and ``retry_count`` counts those after
the first. ``max_retries`` (given at start, else the workflow's ``max_retries``, else no limit)
bounds them: an execution whose retry count has reached it is not driven again but ends FAILED,
its error saying so, without compensation (its driver kept failing, so nothing it would run is
trusted to finish); that stops one poisonous execution from taking the replicas down in turn. A
replica's ordinary restart counts as a retry too, so give long-lived executions room.
``metadata`` is the caller's own JSON object, kept with the execution, shown with it and in the
queue, and readable as ``$.execution.metadata`` in its mappings. ``GET /queue/stats`` lists the
first waiting executions in the seed's shape (``queued_executions``).

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
import json
import logging
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from nexus.bus import Bus
from nexus.eventlog import ConcurrencyError, EventLog
from nexus.obs import current_correlation_id, current_traceparent
from nexus.proto import PLATFORM_TENANT, CloudEvent, RandomPool, new_event
from nexus.proto.events import workflow as ev
from nexus.services.workflow import metrics
from nexus.services.workflow.context import TransitionCallback
from nexus.services.workflow.definitions import MAX_RETRIES_LIMIT, WorkflowDefinition
from nexus.services.workflow.driver import SOURCE, Driver, execution_event
from nexus.services.workflow.errors import (
    InactiveWorkflowError,
    InputValidationError,
    UnknownExecutionError,
    UnknownWorkflowError,
)
from nexus.services.workflow.handlers import ExecutionState, apply, fold, stream_id
from nexus.services.workflow.identity import ServiceIdentity
from nexus.services.workflow.registry import WorkflowRegistry
from nexus.services.workflow.scheduler import Scheduler
from nexus.services.workflow.view import ACTIVE, ExecutionView

__all__ = ["MAX_METADATA_BYTES", "EngineStats", "WorkflowEngine", "queued_execution"]

logger = logging.getLogger("nexus.workflow.engine")

_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c1b5e-8f7a-4c55-9a43-4b1f6f0e2d11")
_T = "nexus.workflow."


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


def queued_execution(state: ExecutionState) -> dict[str, Any]:
    """An execution as seed 004's ``QueuedExecution``: its place in the queue and its retries."""
    return {
        "id": state.execution_id,
        "execution_id": state.execution_id,
        "workflow_id": state.workflow_id,
        "priority": state.priority,
        "status": state.status,
        "retry_count": state.retry_count,
        "max_retries": state.max_retries,
        "queued_at": state.created_at,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "metadata": state.metadata,
    }


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
MAX_METADATA_BYTES = 16 * 1024
"""The largest ``metadata`` an execution may carry (as JSON): it is copied into every context."""


def _check_start_fields(max_retries: Any, metadata: Any) -> None:
    problems: list[tuple[str, str]] = []
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES_LIMIT
    ):
        problems.append(("$.max_retries", f"must be an integer from 0 to {MAX_RETRIES_LIMIT}, got {max_retries!r}"))
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
            problems.append(("$.metadata", "must be a JSON object"))
        else:
            try:
                size = len(json.dumps(metadata, allow_nan=False))
            except (TypeError, ValueError) as exc:
                problems.append(("$.metadata", f"must be plain JSON: {exc}"))
            else:
                if size > MAX_METADATA_BYTES:
                    problems.append(("$.metadata", f"is {size} bytes of JSON; at most {MAX_METADATA_BYTES}"))
    if problems:
        raise InputValidationError(problems)


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
        self.random = random.Random()
        """Draws the jitter of retry delays."""
        self.ids = RandomPool()
        """Event ids and trace ids (random bytes drawn in bulk)."""
        self.scheduler = Scheduler(self)
        """The dispatcher, heartbeat and take-over sweeper of this replica, and its drivers."""
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start_processing(self) -> None:
        """Start the dispatcher, the heartbeat and the take-over sweeper (the view must be loaded)."""
        if self.scheduler.running:
            return
        # One session for every step call, its pool kept warm across executions. No cookie jar:
        # a cookie one execution's service sets must not ride along on another's calls (and
        # the jar's filtering ran for every request).
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.http_connections, limit_per_host=self.http_connections),
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        await self.scheduler.start()

    async def stop_processing(self) -> None:
        """Stop taking work and stop the drivers (their executions resume on the next start or elsewhere)."""
        await self.scheduler.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def running_here(self) -> int:
        """Executions this replica is driving now."""
        return len(self.scheduler.drivers)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP client of every step call (``steps.StepRuntime``); open while processing."""
        assert self._session is not None, "the engine is not processing"
        return self._session

    def orphans(self, now: float | None = None) -> builtins.list[ExecutionState]:
        """Unfinished executions this replica should take over (``Scheduler.orphans``)."""
        return self.scheduler.orphans(now)

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
        max_retries: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise InputValidationError([("$.priority", f"must be an integer from 0 to 100, got {priority!r}")])
        metadata = dict(metadata) if isinstance(metadata, Mapping) else metadata
        _check_start_fields(max_retries, metadata)
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
            execution_id = self.ids.event_id()
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
                max_retries=max_retries if max_retries is not None else workflow.max_retries,
                metadata=metadata,
            ),
            source=SOURCE,
            id=self.ids.event_id(),
            subject=execution_id,
            # A start inside a caller's correlation (nexus.obs.correlation) joins it.
            correlationid=correlation_id or current_correlation_id() or execution_id,
            causationid=causation_id,
            # The request, command or triggering event that starts it: every step, retry and
            # compensation of the execution, in any replica and after a restart, is a span of
            # this trace (the driver restores it from this event).
            traceparent=current_traceparent(),
            tenant=tenant,
        )
        if self.scheduler.has_free_slot_now(workflow, execution_id):
            return await self._start_at_once(event)
        try:
            stored = await self.log.append(stream_id(execution_id), [event], expected_version=0)
        except ConcurrencyError:
            return execution_id  # the same idempotency key: that execution already exists
        self.view.apply_stored(stored)
        return execution_id

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
        driver = Driver(self, state, committed=0)
        driver.pending.append(queued)
        driver.pending_states.append(state)
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        driver.first_append = first
        self.scheduler.spawn(state, takeover=False, driver=driver)
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
                    execution_event(
                        self.ids, state, "execution.cancel_requested", ev.ExecutionCancelRequested, reason=reason
                    ),
                    execution_event(
                        self.ids,
                        state,
                        "execution.cancelled",
                        ev.ExecutionCancelled,
                        workflow_id=state.workflow_id,
                        reason=reason,
                    ),
                ]
            else:
                to_append = [
                    execution_event(
                        self.ids, state, "execution.cancel_requested", ev.ExecutionCancelRequested, reason=reason
                    )
                ]
            try:
                stored = await self.log.append(stream_id(execution_id), to_append, expected_version=state.version)
            except ConcurrencyError:
                continue
            metrics.count_stored(stored, None)
            new_state = self.view.apply_stored(stored) or fold([*events, *stored])
            self.scheduler.wake(execution_id)
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
            "queued_executions": [queued_execution(s) for s in queued[:10]],
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
