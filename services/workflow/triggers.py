"""Triggers: an event type and a condition bound to a workflow start, with the input mapped by JSONPath.

A trigger belongs to a tenant: the client that registered it through ``POST /triggers`` (JSON or
YAML), or the platform for the ``trigger.yaml`` files bundled with a module. Each registration is
a ``trigger.registered`` event in stream ``triggers`` (the tenant in its data and in the envelope)
and the set of triggers is a fold of that stream; ids are unique per tenant, so a client's
``phase_1`` never replaces another client's or the platform's. ``GET /triggers`` lists the
caller's own (an admin's: every tenant's); ``DELETE /triggers/{id}`` records ``trigger.removed``
for the caller's own only (another tenant's id is answered 404, as a missing one).

Every event of the platform that a trigger could match is offered to the triggers by following
the event log (``nexus.replay.tail``): in position order, none missed, with or without NATS;
every replica follows it and the starts are idempotent. The tail reads only the types the
triggers name (``TriggerEngine.followed_types``; every type while a trigger names a pattern or
an external event), so the events no trigger names are not even decoded. External events ingested from
``nexus.ext.<source>.<event>`` arrive as events of stream ``ext-<source>``. A
trigger matches an event when

- its tenant may see the event: the platform's triggers see every event, a client's only the
  events of its own tenant (the envelope's ``tenant``; for an execution's event without it, the
  execution's owner), external events included: one ingested with no tenant fires only the
  platform's triggers;
- its ``event_type`` is the event's ``type``, or ``ext.<source>.<event>`` for an external event
  (``*`` stands for one token, a final ``>`` for the rest, as in NATS subjects);
- it was registered before the event (its registration's log position is lower);
- its ``condition`` holds over the event (``$.data.severity == 'high'``, the same condition
  language as workflow steps).

The start's input is ``input_map`` evaluated over the event; its idempotency key is the event's
id, so an event starts a workflow once however often it is delivered or replayed, and a
``trigger.fired`` event in stream ``trigger-<trigger id>-<event id>`` (``trigger-<tenant>.<trigger
id>-<event id>`` for a client's trigger) records which execution it started. The execution
belongs to the trigger's tenant; a platform trigger works for the tenant of the event it reacts
to (the seven phases of a client's user run as that client's executions).

Loops stop. An execution started by a trigger records its place in the chain (``depth`` and
``chain`` in the execution's ``trigger`` metadata): 1 when the event did not come from an
execution started by a trigger, else that execution's depth + 1. A start that would go beyond
``NEXUS_TRIGGER_MAX_DEPTH`` (8) is not made; nor is one over the trigger's rate
(``NEXUS_TRIGGER_RATE`` starts per second, bursts of ``NEXUS_TRIGGER_BURST``). Either way a
``trigger.refused`` event, in the stream the firing would have used, names the reason and the
chain (execution and trigger ids), and the refusal is logged (rate refusals once per interval,
with a count).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from nexus.auth import AUTH, KeyInfo
from nexus.bus import RetryableError
from nexus.eventlog import ConcurrencyError, EventLog
from nexus.obs import parent_context
from nexus.proto import PLATFORM_TENANT, CloudEvent, new_event
from nexus.proto.events.jobs import TriggerFired, TriggerLink, TriggerRefused, TriggerRegistered, TriggerRemoved
from nexus.replay import tail
from nexus.runtime import HTTPError, Service, json_response
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.errors import (
    ExpressionError,
    InactiveWorkflowError,
    InputValidationError,
    UnknownWorkflowError,
)
from nexus.services.workflow.expressions import Condition, Mapping_, compile_condition, compile_mapping
from nexus.services.workflow.settings import WorkflowSettings
from nexus.yamlsafe import YAMLInputError, load_yaml

__all__ = [
    "TRIGGERS_STREAM",
    "Trigger",
    "TriggerEngine",
    "TriggerError",
    "TriggerFold",
    "TriggerSettings",
    "fired_stream",
    "install",
    "parse_trigger",
]

logger = logging.getLogger("nexus.workflow.triggers")
_tracer = trace.get_tracer("nexus.workflow.triggers")

TRIGGERS_STREAM = "triggers"
TRIGGER_REGISTERED = "nexus.workflow.trigger.registered"
TRIGGER_REMOVED = "nexus.workflow.trigger.removed"
TRIGGER_FIRED = "nexus.workflow.trigger.fired"
TRIGGER_REFUSED = "nexus.workflow.trigger.refused"
_OWN_EVENTS = frozenset({TRIGGER_REGISTERED, TRIGGER_REMOVED, TRIGGER_FIRED, TRIGGER_REFUSED})
SOURCE = "nexus/workflow"
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_\-*>]+(\.[A-Za-z0-9_\-*>]+)*$")
_FIELDS = {"id", "event_type", "workflow_id", "input_map", "condition", "priority", "active"}
_EXECUTION_STREAM = "execution-"
_REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two log lines about one trigger's rate refusals (the rest are counted)."""


@dataclass(frozen=True)
class TriggerSettings:
    """How far trigger chains go and how fast one trigger may start workflows (``NEXUS_TRIGGER_*``,
    read by the service's settings)."""

    max_depth: int = 8
    """``NEXUS_TRIGGER_MAX_DEPTH``: the longest chain of trigger-started executions (an execution's
    event firing a trigger that starts the next); the start beyond it is refused and recorded."""
    rate: float = 10.0
    """``NEXUS_TRIGGER_RATE``: starts per second each trigger may make, on average."""
    burst: int = 100
    """``NEXUS_TRIGGER_BURST``: starts a trigger may make at once before ``rate`` applies."""

    @classmethod
    def of(cls, settings: WorkflowSettings) -> TriggerSettings:
        """The trigger limits of the workflow service's settings (read and checked at start)."""
        return cls(max_depth=settings.trigger_max_depth, rate=settings.trigger_rate, burst=settings.trigger_burst)


class TriggerError(ValueError):
    """A trigger definition was refused; ``problems`` lists (path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("invalid trigger: " + "; ".join(f"{p}: {m}" for p, m in problems))


@dataclass(frozen=True)
class Trigger:
    """A registered trigger, compiled."""

    spec: TriggerRegistered
    condition: Condition | None
    input_map: Mapping_
    position: int = 0
    """Log position of its registration: it fires for later events only."""

    @property
    def id(self) -> str:
        return self.spec.trigger_id

    @property
    def tenant(self) -> str:
        """The client that owns the trigger, or the platform."""
        return self.spec.tenant or PLATFORM_TENANT

    @property
    def key(self) -> tuple[str, str]:
        """(tenant, id): ids are unique per tenant."""
        return self.tenant, self.spec.trigger_id

    def sees(self, event_tenant: str | None) -> bool:
        """Whether the trigger's tenant may see an event of ``event_tenant`` (None: no tenant)."""
        return self.tenant == PLATFORM_TENANT or event_tenant == self.tenant

    def matches_type(self, event: CloudEvent) -> bool:
        names = [event.type]
        stream = event.streamid or ""
        if stream.startswith("ext-"):
            names.append(f"ext.{stream[4:]}.{event.extevent or event.type.rsplit('.', 1)[-1]}")
        return any(_type_matches(self.spec.event_type, name) for name in names)

    def evaluate(self, event: CloudEvent, event_tenant: str | None = None) -> dict[str, Any] | None:
        """The workflow input when the trigger fires for ``event`` (of ``event_tenant``), else None."""
        if not self.spec.active or not self.sees(event_tenant) or not self.matches_type(event):
            return None
        if event.position is not None and self.position and event.position <= self.position:
            return None
        doc = msgspec.to_builtins(event)
        if self.condition is not None and not self.condition.evaluate(doc):
            return None
        mapped = self.input_map.evaluate(doc)
        return mapped if isinstance(mapped, dict) else {"event": mapped}


def fired_stream(tenant: str, trigger_id: str, event_id: str) -> str:
    """The stream recording what a trigger did with one event (``trigger.fired`` or ``.refused``).

    Trigger ids hold no ``.``, so a client's ``<tenant>.<id>`` never names a platform trigger.
    """
    if tenant == PLATFORM_TENANT:
        return f"trigger-{trigger_id}-{event_id}"
    return f"trigger-{tenant}.{trigger_id}-{event_id}"


class _RateLimit:
    """A token bucket per trigger: ``burst`` starts at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, key: tuple[str, str]) -> bool:
        now = self.clock()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


@dataclass
class _RefusalLog:
    """Logs one trigger's rate refusals once per interval, with how many there were."""

    last: dict[tuple[str, str], float] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def refused(self, key: tuple[str, str], message: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        now = time.monotonic()
        if now - self.last.get(key, -_REFUSAL_LOG_INTERVAL) >= _REFUSAL_LOG_INTERVAL:
            logger.warning("%s (%d refused since the last report)", message, self.counts[key])
            self.last[key] = now
            self.counts[key] = 0


_FOLLOWED_ALWAYS = frozenset({TRIGGER_REGISTERED, TRIGGER_REMOVED})
"""What the triggers' tail reads even with no trigger: the events that change the set."""


def _followed_types(triggers: Iterable[Trigger]) -> frozenset[str] | None:
    """The event types ``triggers`` can fire for, with ``_FOLLOWED_ALWAYS``; None: any type."""
    names = set(_FOLLOWED_ALWAYS)
    for trigger in triggers:
        if not trigger.spec.active:
            continue  # an inactive trigger fires for nothing; re-registering it active changes the set
        tokens = trigger.spec.event_type.split(".")
        if tokens[0] == "ext" or "*" in tokens or ">" in tokens:
            return None
        names.add(trigger.spec.event_type)
    return frozenset(names)


def _type_matches(pattern: str, name: str) -> bool:
    want, have = pattern.split("."), name.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def parse_trigger(document: str | bytes | Mapping[str, Any]) -> tuple[TriggerRegistered, Condition | None, Mapping_]:
    """Validate a trigger definition (YAML or JSON text, or a mapping), with every problem by path.

    Raises:
        TriggerError: unknown fields, a missing or malformed id, event type or workflow id, a
            malformed condition or JSONPath, a priority outside 0-100.
    """
    if isinstance(document, (str, bytes)):
        try:
            document = load_yaml(document, what="trigger")
        except YAMLInputError as exc:
            raise TriggerError([("$", str(exc))]) from None
    if not isinstance(document, Mapping):
        raise TriggerError([("$", "a trigger must be a mapping")])
    problems: list[tuple[str, str]] = [(f"$.{k}", "unknown field") for k in document if k not in _FIELDS]
    trigger_id = document.get("id")
    if not isinstance(trigger_id, str) or not _ID.match(trigger_id):
        problems.append(("$.id", "required: 1-128 letters, digits, '_' or '-'"))
    event_type = document.get("event_type")
    if not isinstance(event_type, str) or not _PATTERN.match(event_type):
        problems.append(("$.event_type", "required: an event type such as 'ext.gaia.anomaly_detected'"))
    workflow_id = document.get("workflow_id")
    if not isinstance(workflow_id, str) or not workflow_id:
        problems.append(("$.workflow_id", "required: the workflow to start"))
    condition_text = document.get("condition") or ""
    condition = None
    if not isinstance(condition_text, str):
        problems.append(("$.condition", "must be a string"))
    elif condition_text:
        try:
            condition = compile_condition(condition_text)
        except ExpressionError as exc:
            problems.append(("$.condition", str(exc)))
    input_map = document.get("input_map", {})
    mapping = None
    if not isinstance(input_map, Mapping):
        problems.append(("$.input_map", "must be a mapping of input field to JSONPath or literal"))
    else:
        try:
            mapping = compile_mapping(dict(input_map), "$.input_map")
        except ExpressionError as exc:
            problems.extend(("$.input_map", line) for line in str(exc).splitlines())
    priority = document.get("priority", 50)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 100:
        problems.append(("$.priority", "must be an integer 0-100"))
    active = document.get("active", True)
    if not isinstance(active, bool):
        problems.append(("$.active", "must be true or false"))
    if problems or mapping is None:
        raise TriggerError(problems)
    # No problem was found: the three are strings (checked above).
    spec = TriggerRegistered(
        trigger_id=str(trigger_id),
        event_type=str(event_type),
        workflow_id=str(workflow_id),
        input_map=dict(input_map),
        condition=condition_text,
        priority=priority,
        active=active,
    )
    return spec, condition, mapping


class TriggerFold:
    """The set of triggers of every tenant: the fold of stream ``triggers``."""

    def __init__(self) -> None:
        self.triggers: dict[tuple[str, str], Trigger] = {}
        self.version = 0
        """The last version of stream ``triggers`` folded in."""

    def apply(self, event: CloudEvent) -> None:
        """Fold one event of stream ``triggers``."""
        if event.type == TRIGGER_REGISTERED:
            spec, condition, mapping = parse_trigger(msgspec.to_builtins(_spec_document(event.data)))
            tenant = str((event.data or {}).get("tenant") or event.tenant or PLATFORM_TENANT)
            spec = msgspec.structs.replace(spec, tenant=tenant)
            self.triggers[(tenant, spec.trigger_id)] = Trigger(spec, condition, mapping, event.position or 0)
        elif event.type == TRIGGER_REMOVED:
            removed = msgspec.convert(event.data, TriggerRemoved)
            self.triggers.pop((removed.tenant or event.tenant or PLATFORM_TENANT, removed.trigger_id), None)
        self.version = max(self.version, event.streamversion or 0)

    async def refresh(self, log: EventLog) -> None:
        """Fold what was appended to stream ``triggers`` since the last refresh (by any replica)."""
        for event in await log.read_stream(TRIGGERS_STREAM, self.version + 1):
            self.apply(event)


class TriggerEngine:
    """The triggers of every tenant (a fold of stream ``triggers``) and their evaluation.

    Args:
        ctx: The workflow service's context.
        settings: Chain depth and rate limits (default: from the environment).
    """

    def __init__(self, ctx: WorkflowContext, settings: TriggerSettings | None = None) -> None:
        self.ctx = ctx
        self.log: EventLog = ctx.log
        self.settings = settings or TriggerSettings.of(ctx.settings)
        self.fold = TriggerFold()
        self._triggers = self.fold.triggers
        self._lock = asyncio.Lock()
        self._rate = _RateLimit(self.settings.rate, self.settings.burst)
        self._refusals = _RefusalLog()
        self.fired = 0
        """Starts made by this replica (for metrics and tests)."""
        self.refused = 0
        """Starts this replica refused (depth or rate), for metrics and tests."""
        self._candidates: dict[str, list[Trigger]] = {}
        self._candidates_of = (-1, -1)
        """(fold version, number of triggers) the candidates were computed for."""
        self._followed: frozenset[str] | None = _FOLLOWED_ALWAYS
        self._followed_of = (-1, -1)
        """(fold version, number of triggers) the followed types were computed for."""

    def triggers(self, tenant: str | None = None) -> list[Trigger]:
        """Every trigger, or those of one tenant."""
        return [t for t in self._triggers.values() if tenant is None or t.tenant == tenant]

    def candidates(self, event: CloudEvent) -> list[Trigger]:
        """The triggers whose event type matches ``event``'s (cached per type: most events of a
        busy platform match no trigger, and each reaches every replica)."""
        stream = event.streamid or ""
        key = event.type if not stream.startswith("ext-") else f"{event.type}\x00{stream}\x00{event.extevent}"
        current = (self.fold.version, len(self._triggers))
        if current != self._candidates_of:
            self._candidates.clear()
            self._candidates_of = current
        found = self._candidates.get(key)
        if found is None:
            found = [t for t in self._triggers.values() if t.matches_type(event)]
            if len(self._candidates) < 10_000:
                self._candidates[key] = found
        return found

    def followed_types(self) -> frozenset[str] | None:
        """The event types the triggers' tail reads: those some active trigger names, and the
        registrations and removals that change the set; None (every event) when a trigger's
        type is a pattern (``*``, ``>``) or an external one (``ext.<source>.<event>`` names the
        stream and the event's name, not its type, which the producer chose).

        Why: each replica's tail would otherwise fetch and decode every event of the log, most
        of which no trigger names. Recomputed when the trigger set changes; the tail asks after
        every event it hands over and follows the new set from the next position.
        """
        current = (self.fold.version, len(self._triggers))
        if current != self._followed_of:
            self._followed_of = current
            self._followed = _followed_types(self._triggers.values())
        return self._followed

    def get(self, tenant: str, trigger_id: str) -> Trigger | None:
        return self._triggers.get((tenant, trigger_id))

    def apply(self, event: CloudEvent) -> None:
        """Fold one event of stream ``triggers``."""
        self.fold.apply(event)

    async def refresh(self) -> None:
        """Fold what was appended to stream ``triggers`` since the last refresh (by any replica)."""
        async with self._lock:
            await self.fold.refresh(self.log)

    async def register(self, document: str | bytes | Mapping[str, Any], *, tenant: str = PLATFORM_TENANT) -> Trigger:
        """Validate and record a trigger of ``tenant``; the same definition registered again records nothing.

        Raises:
            TriggerError: the definition is invalid, or its workflow is not one ``tenant`` may start.
        """
        spec, _, _ = parse_trigger(document)
        spec = msgspec.structs.replace(spec, tenant=tenant)
        if self.ctx.registry.get_workflow(spec.workflow_id, tenant=tenant) is None:
            raise TriggerError([("$.workflow_id", f"workflow {spec.workflow_id!r} is not registered")])
        await self.refresh()
        known = self._triggers.get((tenant, spec.trigger_id))
        if known is not None and known.spec == spec:
            return known
        event = new_event(TRIGGER_REGISTERED, spec, source=SOURCE, subject=spec.trigger_id, tenant=tenant)
        await self.log.append(TRIGGERS_STREAM, [event])
        await self.refresh()
        return self._triggers[(tenant, spec.trigger_id)]

    async def remove(self, trigger_id: str, *, tenant: str = PLATFORM_TENANT) -> bool:
        """Record that ``tenant``'s trigger is removed; False when that tenant has no such trigger."""
        await self.refresh()
        if (tenant, trigger_id) not in self._triggers:
            return False
        data = TriggerRemoved(trigger_id=trigger_id, tenant=tenant)
        event = new_event(TRIGGER_REMOVED, data, source=SOURCE, subject=trigger_id, tenant=tenant)
        await self.log.append(TRIGGERS_STREAM, [event])
        await self.refresh()
        return True

    async def load_directory(self, directory: Path) -> list[Trigger]:
        """Register every ``*.yaml`` trigger in ``directory`` (a file may hold a list) as the platform's."""
        documents = await asyncio.to_thread(_read_yaml_files, directory)
        return [await self.register(doc) for doc in documents]

    async def handle(self, event: CloudEvent) -> list[str]:
        """Offer one stored event to every trigger; the ids of the executions it started.

        Idempotent: the event id is the idempotency key of each start, and what each trigger did
        with the event (fired or refused) is recorded once in its ``fired_stream``.

        Raises:
            RetryableError: the engine could not start an execution now (redeliver later).
        """
        if event.type in _OWN_EVENTS:
            if event.streamid == TRIGGERS_STREAM:
                await self.refresh()
            return []
        started: list[str] = []
        triggers = self.candidates(event)
        if not triggers:
            return started
        event_tenant = await self._tenant_of(event)
        chain: tuple[int, list[TriggerLink]] | None = None
        for trigger in triggers:
            try:
                workflow_input = trigger.evaluate(event, event_tenant)
            except (ExpressionError, TypeError, ValueError) as exc:
                logger.warning("trigger %s could not evaluate event %s: %s", trigger.id, event.id, exc)
                continue
            if workflow_input is None:
                continue
            record_stream = fired_stream(trigger.tenant, trigger.id, event.id)
            if await self.log.stream_version(record_stream):
                continue  # handled already (a redelivery or a replay of the log)
            if chain is None:
                chain = await self._chain(event)
            depth, links = chain
            if depth > self.settings.max_depth:
                message = (
                    f"trigger {trigger.id} ({trigger.tenant}) did not start {trigger.spec.workflow_id} for event "
                    f"{event.id}: the trigger chain would reach depth {depth}, beyond NEXUS_TRIGGER_MAX_DEPTH="
                    f"{self.settings.max_depth} (" + " -> ".join(_link_text(link) for link in links) + ")"
                )
                logger.warning("%s", message)
                await self._refuse(trigger, event, record_stream, "depth", message, depth, links)
                continue
            if not self._rate.take(trigger.key):
                message = (
                    f"trigger {trigger.id} ({trigger.tenant}) did not start {trigger.spec.workflow_id} for event "
                    f"{event.id}: over its rate of {self.settings.rate:g} starts/s "
                    f"(bursts of {self.settings.burst})"
                )
                self._refusals.refused(trigger.key, message)
                await self._refuse(trigger, event, record_stream, "rate", message, depth, links)
                continue
            # A platform trigger works for the tenant whose event it reacts to.
            tenant = trigger.tenant if trigger.tenant != PLATFORM_TENANT else (event_tenant or PLATFORM_TENANT)
            # The start is a span of the triggering event's trace (the ingest's, for an external
            # event): the execution records it, so the whole execution joins that trace.
            with _tracer.start_as_current_span(
                f"trigger {trigger.id}",
                context=parent_context(event.traceparent),
                kind=SpanKind.CONSUMER,
                attributes={
                    "nexus.trigger.id": trigger.id,
                    "nexus.workflow.id": trigger.spec.workflow_id,
                    "nexus.event.id": event.id,
                    "nexus.event.type": event.type,
                },
            ):
                try:
                    execution_id = await self.ctx.engine.start(
                        trigger.spec.workflow_id,
                        workflow_input,
                        priority=trigger.spec.priority,
                        idempotency_key=event.id,
                        correlation_id=event.correlationid or event.id,
                        causation_id=event.id,
                        trigger={
                            "kind": "trigger",
                            "trigger_id": trigger.id,
                            "trigger_tenant": trigger.tenant,
                            "event_id": event.id,
                            "event_type": event.type,
                            "depth": depth,
                            "chain": [msgspec.to_builtins(link) for link in links],
                        },
                        tenant=tenant,
                    )
                except (InputValidationError, UnknownWorkflowError, InactiveWorkflowError) as exc:
                    # The event can never start this workflow: say so and go on with the others.
                    logger.warning(
                        "trigger %s did not start %s for event %s: %s",
                        trigger.id,
                        trigger.spec.workflow_id,
                        event.id,
                        exc,
                    )
                    continue
                except Exception as exc:
                    raise RetryableError(f"trigger {trigger.id}: {exc}") from exc
                fired = TriggerFired(
                    trigger_id=trigger.id,
                    event_id=event.id,
                    workflow_id=trigger.spec.workflow_id,
                    execution_id=execution_id,
                    tenant=trigger.tenant,
                    depth=depth,
                )
                record = new_event(
                    TRIGGER_FIRED,
                    fired,
                    source=SOURCE,
                    subject=trigger.id,
                    causationid=event.id,
                    correlationid=event.correlationid or event.id,
                    tenant=tenant,
                )
                with contextlib.suppress(ConcurrencyError):
                    await self.log.append(record_stream, [record], expected_version=0)
                    self.fired += 1
            started.append(execution_id)
        return started

    async def _tenant_of(self, event: CloudEvent) -> str | None:
        """The tenant an event belongs to: its envelope's, else (an execution's event) the execution's owner."""
        if event.tenant:
            return event.tenant
        stream = event.streamid or ""
        if stream.startswith(_EXECUTION_STREAM):
            state = await self._execution(stream.removeprefix(_EXECUTION_STREAM))
            return state.tenant if state is not None else None
        return None

    async def _execution(self, execution_id: str) -> Any:
        return self.ctx.engine.get(execution_id) or await self.ctx.engine.load(execution_id)

    async def _chain(self, event: CloudEvent) -> tuple[int, list[TriggerLink]]:
        """The depth a start for ``event`` would have, and the chain of executions before it.

        An event of an execution continues that execution's chain; any other event (an external
        one, a phase trigger, a job) starts a new chain.
        """
        stream = event.streamid or ""
        if not stream.startswith(_EXECUTION_STREAM):
            return 1, []
        parent_id = stream.removeprefix(_EXECUTION_STREAM)
        state = await self._execution(parent_id)
        meta = state.trigger if state is not None and isinstance(state.trigger, dict) else {}
        if meta.get("kind") != "trigger":
            return 1, [TriggerLink(execution_id=parent_id)]
        try:
            earlier = msgspec.convert(meta.get("chain") or [], list[TriggerLink])
            parent_depth = int(meta.get("depth") or 1)
        except (msgspec.ValidationError, TypeError, ValueError):
            earlier, parent_depth = [], 1
        link = TriggerLink(execution_id=parent_id, trigger_id=str(meta.get("trigger_id") or ""))
        return parent_depth + 1, [*earlier, link]

    async def _refuse(
        self,
        trigger: Trigger,
        event: CloudEvent,
        stream: str,
        reason: str,
        message: str,
        depth: int,
        links: list[TriggerLink],
    ) -> None:
        refused = TriggerRefused(
            trigger_id=trigger.id,
            event_id=event.id,
            workflow_id=trigger.spec.workflow_id,
            reason=reason,
            message=message,
            tenant=trigger.tenant,
            depth=depth,
            chain=links,
        )
        record = new_event(
            TRIGGER_REFUSED,
            refused,
            source=SOURCE,
            subject=trigger.id,
            causationid=event.id,
            correlationid=event.correlationid or event.id,
            tenant=trigger.tenant,
        )
        with contextlib.suppress(ConcurrencyError):
            await self.log.append(stream, [record], expected_version=0)
            self.refused += 1


def _link_text(link: TriggerLink) -> str:
    return f"execution {link.execution_id}" + (f" (trigger {link.trigger_id})" if link.trigger_id else "")


def _read_yaml_files(directory: Path) -> list[Any]:
    documents: list[Any] = []
    if not directory.is_dir():
        return documents
    for path in sorted(directory.glob("*.yaml")):
        loaded = load_yaml(path.read_text(), what=f"trigger file {path.name}")
        documents.extend(loaded if isinstance(loaded, list) else [loaded])
    return documents


def _spec_document(data: Any) -> dict[str, Any]:
    spec = msgspec.convert(data, TriggerRegistered)
    return {
        "id": spec.trigger_id,
        "event_type": spec.event_type,
        "workflow_id": spec.workflow_id,
        "input_map": spec.input_map,
        "condition": spec.condition,
        "priority": spec.priority,
        "active": spec.active,
    }


# --- how events reach the triggers -------------------------------------------------------------


async def _offer(engine: TriggerEngine, event: CloudEvent) -> None:
    """Offer one event of the log to the triggers, retrying a start the engine could not make now."""
    for delay in (0.1, 0.5, 2.0, None):
        try:
            await engine.handle(event)
            return
        except RetryableError as exc:
            if delay is None:
                logger.error("event %s was not offered to every trigger: %s", event.id, exc)
                return
            await asyncio.sleep(delay)


def _first_position(engine: TriggerEngine) -> int:
    """Where the triggers' tail starts: a trigger fires only for events after its registration,
    so nothing before the earliest registration can start anything (starts are idempotent, so
    reading an event again after a restart starts nothing twice)."""
    triggers = engine.triggers()
    return min(t.position for t in triggers) + 1 if triggers else 1


TRIGGER_ENGINE = web.AppKey("nexus.workflow.triggers", TriggerEngine)

_TriggerId = Annotated[str, msgspec.Meta(pattern=_ID.pattern)]


class TriggerDefinition(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /triggers``: a trigger, as JSON (or the same fields as YAML)."""

    id: _TriggerId
    """Unique among the caller's triggers: registering the same id again replaces it."""
    event_type: Annotated[str, msgspec.Meta(pattern=_PATTERN.pattern)]
    """The event type that fires it (``ext.<source>.<event>`` for external events; ``*`` and ``>``
    as in NATS subjects)."""
    workflow_id: Annotated[str, msgspec.Meta(min_length=1)]
    """The workflow to start: the caller's own, or the platform's."""
    input_map: dict[str, Any] = {}
    """Workflow input field → JSONPath over the event (``$.data.…``), or a literal."""
    condition: str = ""
    """A condition over the event (``$.data.severity == 'high'``); empty: always."""
    priority: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50
    active: bool = True


class TriggerView(msgspec.Struct, frozen=True, kw_only=True):
    """A registered trigger and the tenant that owns it."""

    id: str
    event_type: str
    workflow_id: str
    input_map: dict[str, Any]
    condition: str
    priority: int
    active: bool
    tenant: str
    """The client that registered it, or ``platform`` for the bundled ones."""


class TriggerRemovedBody(msgspec.Struct, frozen=True, kw_only=True):
    """``DELETE /triggers/{id}``: the trigger is removed; later events no longer fire it."""

    removed: str


class TriggerProblem(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    message: str


class TriggerProblems(msgspec.Struct, frozen=True, kw_only=True):
    """A refused trigger definition: every problem, by path."""

    error: str
    message: str
    problems: list[TriggerProblem]


def view_of(trigger: Trigger) -> TriggerView:
    """The trigger as the HTTP API shows it."""
    return TriggerView(**_spec_document(trigger.spec), tenant=trigger.tenant)


def _tenant_query(request: web.Request, info: KeyInfo) -> str | None:
    """The tenant an admin names with ``?tenant=`` (None: all); anyone else: their own."""
    if not info.is_admin:
        return info.tenant
    return request.query.get("tenant") or None


def install(service: Service, ctx: WorkflowContext, *, bundled: Path | None = None) -> None:
    """Add the trigger routes and the background evaluation of triggers."""
    app = service.app
    engine = TriggerEngine(ctx)
    app[TRIGGER_ENGINE] = engine
    tenant_param = {"tenant": "admins only: the tenant whose triggers to list or remove (default: all / their own)"}

    @service.route(
        "POST",
        "/triggers",
        summary="Register a trigger of the caller's tenant (JSON or YAML); the same id replaces it",
        request=TriggerDefinition,
        response=TriggerView,
        status=201,
        responses={400: "The definition is invalid (a TriggerProblems body names every problem)"},
        tags=["triggers"],
        auth="client",
    )
    async def register(request: web.Request) -> web.Response:
        info = request[AUTH]
        raw = await request.read()
        try:
            trigger = await engine.register(raw, tenant=info.tenant)
        except TriggerError as exc:
            problems = [TriggerProblem(path=p, message=m) for p, m in exc.problems]
            body = TriggerProblems(error="invalid trigger", message=str(exc), problems=problems)
            return json_response(body, status=400)
        return json_response(view_of(trigger), status=201)

    @service.route(
        "GET",
        "/triggers",
        summary="The caller's triggers (an admin's: every tenant's, or one tenant's with ?tenant=)",
        response=list[TriggerView],
        tags=["triggers"],
        auth="client",
        query=tenant_param,
    )
    async def list_triggers(request: web.Request) -> web.Response:
        info = request[AUTH]
        await engine.refresh()
        shown = engine.triggers(_tenant_query(request, info))
        for tenant in sorted({t.tenant for t in shown} - {info.tenant}):
            await service.audit_admin(info, "GET", "/triggers", "triggers", tenant, 200)
        return json_response([view_of(t) for t in sorted(shown, key=lambda t: t.key)])

    @service.route(
        "DELETE",
        "/triggers/{id}",
        summary="Remove one of the caller's triggers (an admin names another tenant's with ?tenant=)",
        response=TriggerRemovedBody,
        responses={404: "The caller has no such trigger"},
        tags=["triggers"],
        auth="client",
        query=tenant_param,
    )
    async def remove(request: web.Request) -> web.Response:
        info = request[AUTH]
        trigger_id = request.match_info["id"]
        tenant = _tenant_query(request, info) or info.tenant
        if not await engine.remove(trigger_id, tenant=tenant):
            raise HTTPError(404, f"no trigger {trigger_id!r}")
        if tenant != info.tenant:
            await service.audit_admin(info, "DELETE", "/triggers/{id}", f"trigger {trigger_id}", tenant, 200)
        return json_response(TriggerRemovedBody(removed=trigger_id))

    async def run(app: web.Application) -> Any:
        await engine.refresh()
        if bundled is not None:
            await engine.load_directory(bundled)
        # Every replica follows the log (exact and ordered, with or without NATS); the event id
        # as idempotency key and the trigger's fired stream make each start happen once.
        task = asyncio.create_task(
            tail(
                ctx.log,
                lambda event: _offer(engine, event),
                start=lambda: _first_position(engine),
                name="triggers",
                types=engine.followed_types,
            ),
            name="workflow-triggers",
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(run)


def dumps(trigger: Trigger) -> str:
    """A trigger as JSON text (for the command line)."""
    return json.dumps(msgspec.to_builtins(view_of(trigger)))
