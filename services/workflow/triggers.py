"""Triggers: an event type and a condition bound to a workflow start, with the input mapped by JSONPath.

A trigger is registered through ``POST /triggers`` (JSON or YAML), ``trigger.yaml`` files bundled
with a module, or ``TriggerEngine.register``; each registration is a ``trigger.registered`` event
in stream ``triggers`` and the set of triggers is a fold of that stream. ``DELETE
/triggers/{id}`` records ``trigger.removed``.

Every event of the platform is offered to the triggers: from the bus's durable consumer
``workflow-triggers`` on ``nexus.evt.>`` when the service has a bus (replicas share it), else by
following the event log. The consumer fills from the log any hole in the log positions it
receives (events JetStream lost), so an event reaches the triggers even then. External events
ingested from ``nexus.ext.<source>.<event>`` arrive as events of stream ``ext-<source>``. A
trigger matches an event when

- its ``event_type`` is the event's ``type``, or ``ext.<source>.<event>`` for an external event
  (``*`` stands for one token, a final ``>`` for the rest, as in NATS subjects);
- it was registered before the event (its registration's log position is lower);
- its ``condition`` holds over the event (``$.data.severity == 'high'``, the same condition
  language as workflow steps).

The start's input is ``input_map`` evaluated over the event; its idempotency key is the event's
id, so an event starts a workflow once however often it is delivered or replayed, and a
``trigger.fired`` event in stream ``trigger-<trigger id>`` records which execution it started.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from nexus.bus import BusError, ConsumerSpec, Delivery, PoisonMessageError, RetryableError
from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog import ConcurrencyError, EventLog
from nexus.proto import STREAM_EVT, CloudEvent, EnvelopeError, decode_event, new_event
from nexus.proto.events.jobs import TriggerFired, TriggerRegistered, TriggerRemoved
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.errors import (
    ExpressionError,
    InactiveWorkflowError,
    InputValidationError,
    UnknownWorkflowError,
)
from nexus.services.workflow.expressions import Condition, Mapping_, compile_condition, compile_mapping
from nexus.services.workflow.jobapi import key_view, require_key
from nexus.yamlsafe import YAMLInputError, load_yaml

__all__ = ["TRIGGERS_STREAM", "Trigger", "TriggerEngine", "TriggerError", "install", "parse_trigger"]

logger = logging.getLogger("nexus.workflow.triggers")

TRIGGERS_STREAM = "triggers"
TRIGGER_REGISTERED = "nexus.workflow.trigger.registered"
TRIGGER_REMOVED = "nexus.workflow.trigger.removed"
TRIGGER_FIRED = "nexus.workflow.trigger.fired"
SOURCE = "nexus/workflow"
CONSUMER = "workflow-triggers"
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_\-*>]+(\.[A-Za-z0-9_\-*>]+)*$")
_FIELDS = {"id", "event_type", "workflow_id", "input_map", "condition", "priority", "active"}


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

    def matches_type(self, event: CloudEvent) -> bool:
        names = [event.type]
        stream = event.streamid or ""
        if stream.startswith("ext-"):
            names.append(f"ext.{stream[4:]}.{event.extevent or event.type.rsplit('.', 1)[-1]}")
        return any(_type_matches(self.spec.event_type, name) for name in names)

    def evaluate(self, event: CloudEvent) -> dict[str, Any] | None:
        """The workflow input when the trigger fires for ``event``, else None."""
        if not self.spec.active or not self.matches_type(event):
            return None
        if event.position is not None and self.position and event.position <= self.position:
            return None
        doc = msgspec.to_builtins(event)
        if self.condition is not None and not self.condition.evaluate(doc):
            return None
        mapped = self.input_map.evaluate(doc)
        return mapped if isinstance(mapped, dict) else {"event": mapped}


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
    spec = TriggerRegistered(
        trigger_id=trigger_id,  # type: ignore[arg-type]
        event_type=event_type,  # type: ignore[arg-type]
        workflow_id=workflow_id,  # type: ignore[arg-type]
        input_map=dict(input_map),
        condition=condition_text,
        priority=priority,
        active=active,
    )
    return spec, condition, mapping


class TriggerEngine:
    """The triggers of the platform (a fold of stream ``triggers``) and their evaluation."""

    def __init__(self, ctx: WorkflowContext) -> None:
        self.ctx = ctx
        self.log: EventLog = ctx.log
        self._triggers: dict[str, Trigger] = {}
        self._version = 0
        self._lock = asyncio.Lock()
        self.fired = 0
        """Starts made by this replica (for metrics and tests)."""

    def triggers(self) -> list[Trigger]:
        return list(self._triggers.values())

    def apply(self, event: CloudEvent) -> None:
        """Fold one event of stream ``triggers``."""
        if event.type == TRIGGER_REGISTERED:
            spec, condition, mapping = parse_trigger(msgspec.to_builtins(_spec_document(event.data)))
            self._triggers[spec.trigger_id] = Trigger(spec, condition, mapping, event.position or 0)
        elif event.type == TRIGGER_REMOVED:
            self._triggers.pop(msgspec.convert(event.data, TriggerRemoved).trigger_id, None)
        self._version = max(self._version, event.streamversion or 0)

    async def refresh(self) -> None:
        """Fold what was appended to stream ``triggers`` since the last refresh (by any replica)."""
        async with self._lock:
            for event in await self.log.read_stream(TRIGGERS_STREAM, self._version + 1):
                self.apply(event)

    async def register(self, document: str | bytes | Mapping[str, Any]) -> Trigger:
        """Validate and record a trigger; the same definition registered again records nothing.

        Raises:
            TriggerError: the definition is invalid, or its workflow is not registered.
        """
        spec, _, _ = parse_trigger(document)
        if self.ctx.registry.get_workflow(spec.workflow_id) is None:
            raise TriggerError([("$.workflow_id", f"workflow {spec.workflow_id!r} is not registered")])
        await self.refresh()
        known = self._triggers.get(spec.trigger_id)
        if known is not None and known.spec == spec:
            return known
        event = new_event(TRIGGER_REGISTERED, spec, source=SOURCE, subject=spec.trigger_id)
        await self.log.append(TRIGGERS_STREAM, [event])
        await self.refresh()
        return self._triggers[spec.trigger_id]

    async def remove(self, trigger_id: str) -> bool:
        """Record that a trigger is removed; False when there is no such trigger."""
        await self.refresh()
        if trigger_id not in self._triggers:
            return False
        event = new_event(TRIGGER_REMOVED, TriggerRemoved(trigger_id=trigger_id), source=SOURCE, subject=trigger_id)
        await self.log.append(TRIGGERS_STREAM, [event])
        await self.refresh()
        return True

    async def load_directory(self, directory: Path) -> list[Trigger]:
        """Register every ``*.yaml`` trigger in ``directory`` (a file may hold a list)."""
        documents = await asyncio.to_thread(_read_yaml_files, directory)
        return [await self.register(doc) for doc in documents]

    async def handle(self, event: CloudEvent) -> list[str]:
        """Offer one stored event to every trigger; the ids of the executions it started.

        Idempotent: the event id is the idempotency key of each start, and the firing is
        recorded once in stream ``trigger-<id>``.

        Raises:
            RetryableError: the engine could not start an execution now (redeliver later).
        """
        if event.type in (TRIGGER_REGISTERED, TRIGGER_REMOVED, TRIGGER_FIRED):
            if event.streamid == TRIGGERS_STREAM:
                await self.refresh()
            return []
        started: list[str] = []
        for trigger in self.triggers():
            try:
                workflow_input = trigger.evaluate(event)
            except (ExpressionError, TypeError, ValueError) as exc:
                logger.warning("trigger %s could not evaluate event %s: %s", trigger.id, event.id, exc)
                continue
            if workflow_input is None:
                continue
            fired_stream = f"trigger-{trigger.id}-{event.id}"
            if await self.log.stream_version(fired_stream):
                continue  # fired already (a redelivery or a replay of the log)
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
                        "event_id": event.id,
                        "event_type": event.type,
                    },
                )
            except (InputValidationError, UnknownWorkflowError, InactiveWorkflowError) as exc:
                # The event can never start this workflow: say so and go on with the others.
                logger.warning(
                    "trigger %s did not start %s for event %s: %s", trigger.id, trigger.spec.workflow_id, event.id, exc
                )
                continue
            except Exception as exc:
                raise RetryableError(f"trigger {trigger.id}: {exc}") from exc
            fired = TriggerFired(
                trigger_id=trigger.id,
                event_id=event.id,
                workflow_id=trigger.spec.workflow_id,
                execution_id=execution_id,
            )
            record = new_event(
                TRIGGER_FIRED,
                fired,
                source=SOURCE,
                subject=trigger.id,
                causationid=event.id,
                correlationid=event.correlationid or event.id,
            )
            with contextlib.suppress(ConcurrencyError):
                await self.log.append(fired_stream, [record], expected_version=0)
                self.fired += 1
            started.append(execution_id)
        return started


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


async def _follow_log(engine: TriggerEngine) -> None:
    """Offer every event of the log to the triggers, from the start (starts are idempotent)."""
    async for event in engine.log.subscribe(1):
        try:
            await engine.handle(event)
        except RetryableError as exc:
            # Without a bus there is no redelivery: try again a few times, then leave it logged.
            for delay in (0.1, 0.5, 2.0):
                await asyncio.sleep(delay)
                try:
                    await engine.handle(event)
                    break
                except RetryableError:
                    continue
            else:
                logger.error("event %s was not offered to every trigger: %s", event.id, exc)


class _PositionGuard:
    """Fills the holes JetStream leaves in the log's sequence before the triggers see an event.

    The relay publishes every event of the log on ``nexus.evt.>`` in position order, and the
    trigger consumer receives all of them; an event whose position is beyond the next one
    means JetStream lost the events between (a crash of its lazy fsync, a deleted message, a
    limit). They are read from the log and offered first, so no external event is missed.
    Offering an event twice starts nothing new (the starts are idempotent), which also makes
    replicas sharing the durable safe: a hole that is only another replica's share is filled
    again, at the cost of the reads.

    Args:
        engine: the trigger engine.
        last: the last position handled, when known (from the durable's acknowledged floor).
    """

    def __init__(self, engine: TriggerEngine, last: int | None) -> None:
        self.engine = engine
        self.last = last

    async def handle(self, delivery: Delivery) -> None:
        try:
            event = decode_event(delivery.data)
        except EnvelopeError as exc:
            raise PoisonMessageError(str(exc)) from exc
        position = event.position
        if position is not None and self.last is not None and position > self.last + 1:
            await self._fill(self.last + 1, position)
        await self.engine.handle(event)
        if position is not None and (self.last is None or position > self.last):
            self.last = position

    async def _fill(self, start: int, end: int) -> None:
        """Offer the log's events with positions in [start, end) to the triggers."""
        await self.engine.refresh()
        triggers = self.engine.triggers()
        if not triggers:
            return
        # A trigger fires only for events after its registration: skip what none can match.
        start = max(start, min(t.position for t in triggers) + 1)
        while start < end:
            events = await self.engine.log.read_all(start, limit=min(_FILL_PAGE, end - start))
            events = [e for e in events if (e.position or 0) < end]
            if not events:
                return
            for event in events:
                await self.engine.handle(event)
            start = (events[-1].position or start) + 1


_FILL_PAGE = 1000


async def _acknowledged_position(bus: Any) -> int | None:
    """The log position of the last event the durable consumer acknowledged, when JetStream knows it."""
    if not isinstance(bus, JetStreamBus):
        return None
    try:
        info = await bus.api(f"$JS.API.CONSUMER.INFO.{STREAM_EVT}.{CONSUMER}")
        seq = int(info.get("ack_floor", {}).get("stream_seq") or 0)
        if not seq:
            return None  # a new consumer: it starts with the first event it gets
        found = await bus.api(f"$JS.API.STREAM.MSG.GET.{STREAM_EVT}", {"seq": seq})
        return decode_event(base64.b64decode(found["message"]["data"])).position
    except (BusError, EnvelopeError, KeyError, ValueError) as exc:
        # Not found (a new durable, a deleted message) or not an event: no floor to start from.
        logger.info("trigger consumer: no acknowledged position to resume from: %s", exc)
        return None


TRIGGER_ENGINE = web.AppKey("nexus.workflow.triggers", TriggerEngine)


def install(app: web.Application, ctx: WorkflowContext, *, bundled: Path | None = None) -> None:
    """Add the trigger routes and the background evaluation of triggers."""
    engine = TriggerEngine(ctx)
    app[TRIGGER_ENGINE] = engine
    guard = require_key(key_view(app, ctx))

    async def register(request: web.Request) -> web.Response:
        text = await request.text()
        try:
            trigger = await engine.register(text)
        except TriggerError as exc:
            body = {"error": "invalid trigger", "problems": [{"path": p, "message": m} for p, m in exc.problems]}
            return web.json_response(body, status=400)
        return web.json_response(_spec_document(trigger.spec), status=201)

    async def list_triggers(request: web.Request) -> web.Response:
        await engine.refresh()
        return web.json_response([_spec_document(t.spec) for t in engine.triggers()])

    async def remove(request: web.Request) -> web.Response:
        if not await engine.remove(request.match_info["id"]):
            return web.json_response({"error": f"no trigger {request.match_info['id']!r}"}, status=404)
        return web.json_response({"removed": request.match_info["id"]})

    app.router.add_post("/triggers", guard(register))
    app.router.add_get("/triggers", guard(list_triggers))
    app.router.add_delete("/triggers/{id}", guard(remove))

    async def run(app: web.Application) -> Any:
        await engine.refresh()
        if bundled is not None:
            await engine.load_directory(bundled)
        consumer = None
        task = None
        if ctx.bus is not None:
            spec = ConsumerSpec(name=CONSUMER, stream=STREAM_EVT, filter_subjects=("nexus.evt.>",))
            guard = _PositionGuard(engine, await _acknowledged_position(ctx.bus))
            consumer = await ctx.bus.consume(spec, guard.handle)
        else:
            task = asyncio.create_task(_follow_log(engine), name="workflow-triggers")
        yield
        if consumer is not None:
            await consumer.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(run)


def dumps(trigger: Trigger) -> str:
    """A trigger as JSON text (for the command line)."""
    return json.dumps(_spec_document(trigger.spec))
