"""Seed 001's seven-phase pipeline, run by the platform instead of a bespoke orchestrator.

``POST /api/v1/workflow/phase/{n}`` (n = 1…7, with ``user_id``, an optional ``sync_id`` and the
phase's fields as metadata) records ``nexus.workflow.phase.triggered`` in stream
``phases-<tenant>/<user_id>``, and with it, in the same batch, the phase's work (``claims.py``).
The bundled triggers (``bundled/phases/triggers``, the platform's) turn each recorded trigger into
a start of workflow ``phase_<n>`` (the phase's report on the platform's content service, and
its mirror to ``NEXUS_SERVICE_INTEGRATIONS`` when set), an execution of the caller's tenant.

The chain is seed 001's: phases 1 → 2 → 3 → 4 follow each other (when ``phase_<n>``'s execution
completes, ``PhaseReactor`` records the trigger of phase n+1, with its work), but phases 5, 6 and
7 happen only on their own triggers: a claim submitted (phase 4's auto-submit, the user's
confirmation of a smart prompt, or a report from outside), a claim rejected, a payout received,
each posted to ``POST /api/v1/workflow/phase/{5,6,7}`` or arriving as an external CloudEvent on
``nexus.ext.<source>.<event>`` of type ``claim.submitted``, ``claim.rejected`` or
``payout.received`` (its data: ``user_id``, ``claim_id`` and the phase's fields; the source's
binding to a client decides whose user it is).

- Phase 4 routes each of ``matches`` by its confidence (``NEXUS_PHASE_AUTO_SUBMIT_CONFIDENCE``,
  ``NEXUS_PHASE_PROMPT_CONFIDENCE``): auto-submit (phase 5 for that claim), a smart prompt that
  ``POST /api/v1/users/{user_id}/claims/{claim_id}/confirm`` answers (phase 5 then), or held.
- Phase 6 records the rejection and its reason; the reactor copies it to the learning stream
  ``phase-learning[-<client>]``, which ``RejectionLearning`` reads to lower the confidence of
  later claims of that type.
- Phase 7 records the fee (``NEXUS_PHASE_FEE_RATE``, exact decimals, half-to-even cents) and the
  ledger entry; the reactor then records the claim's proof root (``claim.proved``), and
  ``GET /api/v1/users/{user_id}/claims/{claim_id}/proof`` serves the packet, which
  ``nexus proof verify FILE`` checks offline.

Each phase tells the user how it went, even when it fails: a ``phase.updated`` event for its
work (a trigger from outside whose fields do not fit still records it, with the reason) and
another when its workflow ends, completed or failed, or could not be started; ``live.py``
sends them (and every event of the user's executions) to the user's connections.

Users are per tenant: user ``u`` of one client and user ``u`` of another are two users, with
their own phase streams, claims, ledger, executions, audit trail and live updates; a client never
reads another's (every route answers 404 for a user the caller does not have).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
from aiohttp import web
from prometheus_client import Counter as PromCounter

from nexus.auth import AUTH
from nexus.eventlog import ConcurrencyError, DuplicateEventError, EventLog
from nexus.proto import PLATFORM_TENANT, CloudEvent, new_event
from nexus.proto.events.jobs import PhaseTriggered
from nexus.proto.events.phases import LearningRejection
from nexus.replay import tail
from nexus.runtime import HTTPError, Service, json_response
from nexus.services.workflow import claims
from nexus.services.workflow.claims import (
    CLAIM_EVENTS,
    ClaimConflict,
    PhaseInputError,
    PhaseRules,
    UserClaims,
    check_input,
    confirmation,
    phase_update,
    proof_packet,
    work,
)
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.definitions import load_document

__all__ = [
    "EXT_PHASES",
    "MIRROR_ACTIONS",
    "PHASES",
    "PHASES_DIR",
    "PHASE_DESK",
    "PHASE_TRIGGERED",
    "PhaseDesk",
    "RejectionLearning",
    "install",
    "learning_stream",
    "parse_phase",
    "phase_of_workflow",
    "phase_workflows",
    "phases_stream",
]

logger = logging.getLogger("nexus.workflow.phases")

PHASES_DIR: Final = Path(__file__).parent / "bundled" / "phases"
PHASE_TRIGGERED: Final = "nexus.workflow.phase.triggered"
PHASES: Final = {
    1: "Zero-Friction Onboarding",
    2: "Autonomous Money Discovery",
    3: "Intelligent Evidence Ecosystem",
    4: "Predictive Refund Orchestration",
    5: "Autonomous Recovery Pipeline",
    6: "Continuous Learning Brain",
    7: "Hyper-Transparency Layer",
}
"""Phase number → name, as seed 001 lists them."""
MIRROR_ACTIONS: Final = {
    1: "oauth-completion",
    2: "sync-completion",
    3: "detection-completion",
    4: "evidence-matching",
    5: "claim-submission",
    6: "claim-rejection",
    7: "payout-received",
}
"""Phase number → the action the integrations service is told of (``POST /phases/<n>/<action>``)."""
EXT_PHASES: Final = {"claim.submitted": 5, "claim.rejected": 6, "payout.received": 7}
"""External CloudEvent type (on ``nexus.ext.<source>.<event>``) → the phase it triggers."""
CHAINED: Final = {1: 2, 2: 3, 3: 4}
"""Phase → the phase its workflow's completion triggers; 5, 6 and 7 wait for their own triggers."""
INTEGRATIONS_SERVICE: Final = "integrations"
SOURCE: Final = "nexus/workflow"
_USER = re.compile(r"^[A-Za-z0-9_\-.@:]{1,200}$")
_ENDINGS: Final = {
    f"nexus.workflow.execution.{outcome}": outcome
    for outcome in ("completed", "failed", "compensated", "cancelled", "timed_out")
}
_TRIGGER_REFUSED: Final = "nexus.workflow.trigger.refused"
_ID_NAMESPACE: Final = uuid.UUID("3d0c6f55-84a4-4b43-9a43-51b1f1e0c001")
_MAX_STATES: Final = 10_000

ROUTED = PromCounter(
    "nexus_workflow_phase_claims_routed",
    "Matched claims phase 4 routed (recorded by this replica), by route (auto_submit, smart_prompt, held).",
    ["route"],
)
UPDATES = PromCounter(
    "nexus_workflow_phase_updates",
    "Phase updates this replica recorded for users, by phase, part (work, workflow) and status.",
    ["phase", "part", "status"],
)


def phases_stream(tenant: str, user_id: str) -> str:
    """The stream of one tenant's user: phase triggers, their work, claims, ledger and updates.

    A tenant name holds no ``/`` (and a user id none either), so no two (tenant, user) pairs
    share a stream; users of the platform keep the stream they had before tenancy.
    """
    if tenant == PLATFORM_TENANT:
        return f"phases-{user_id}"
    return f"phases-{tenant}/{user_id}"


def user_of_stream(stream: str, tenant: str | None) -> tuple[str, str] | None:
    """(tenant, user id) of a phase stream, checked against the envelope's tenant."""
    if not stream.startswith("phases-"):
        return None
    rest = stream.removeprefix("phases-")
    owner, slash, user_id = rest.partition("/")
    if not slash:
        return PLATFORM_TENANT, rest
    return (owner, user_id) if owner == tenant else None


def learning_stream(tenant: str) -> str:
    """The stream a tenant's rejections are recorded in for learning (``phase-learning[-<client>]``)."""
    return "phase-learning" if tenant == PLATFORM_TENANT else f"phase-learning-{tenant}"


def phase_of_workflow(workflow_id: str) -> int | None:
    """The phase a workflow id runs (``phase_4`` → 4), or None."""
    match = re.fullmatch(r"phase_([1-7])", workflow_id or "")
    return int(match.group(1)) if match else None


def parse_phase(text: str) -> int:
    """The phase number of a path segment.

    Raises:
        ValueError: naming the value, when it is not an integer from 1 to 7.
    """
    if not re.fullmatch(r"[1-7]", text or ""):
        raise ValueError(f"phaseNumber must be an integer from 1 to 7, got {text!r}")
    return int(text)


def phase_workflows(directory: Path = PHASES_DIR, *, mirror: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The phase workflows of ``directory/workflows`` as (file name, document), in file order.

    Args:
        directory: The phases directory (``schemas``, ``workflows``, ``triggers``).
        mirror: Add to each phase a step mirroring it to the integrations service.
    """
    documents = []
    for path in sorted((directory / "workflows").glob("*.y*ml")):
        document = dict(load_document(path.read_bytes(), "workflow"))
        phase = phase_of_workflow(str(document.get("id", "")))
        if mirror and phase is not None:
            document["steps"] = [*document.get("steps", []), _mirror_step(phase, document.get("steps", []))]
            document["output"] = {**(document.get("output") or {}), "integration": "$.steps.mirror.output"}
        documents.append((path.name, document))
    return documents


def _mirror_step(phase: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
    work_step = steps[0] if steps else {}
    return {
        "id": "mirror",
        "name": f"Mirror phase {phase} to the integrations service",
        "type": "api_call",
        "service": INTEGRATIONS_SERVICE,
        "endpoint": f"/phases/{phase}/{MIRROR_ACTIONS[phase]}",
        "method": "POST",
        "input_map": {
            "phase": phase,
            "user_id": "$.input.user_id",
            "sync_id": "$.input.sync_id",
            "metadata": "$.input.metadata",
            "report": f"$.steps.{work_step.get('id', 'execute')}.output.text",
        },
        "timeout_seconds": 30,
        "on_failure": "fail",
        # The same policy as the phase's own work: seed 001's retried phase transitions.
        "retry": work_step.get(
            "retry", {"max_attempts": 5, "backoff_ms": 100, "multiplier": 2, "max_backoff_ms": 5000}
        ),
    }


def _event_id(key: str) -> str:
    """A deterministic event id: the reactor's records of one event are the same on every replica."""
    return str(uuid.uuid5(_ID_NAMESPACE, key))


# -- the learning consumer ---------------------------------------------------------------------


class RejectionLearning:
    """Reads each tenant's learning stream: how often each claim type was rejected.

    Phase 4 routes a claim with its confidence lowered by ``PhaseRules.penalty`` of that count:
    ``NEXUS_PHASE_REJECTION_PENALTY`` per rejection, at most ``NEXUS_PHASE_MAX_PENALTY``. The
    stream is read from where this replica last stopped, so a routing costs one short read.
    """

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._seen: dict[str, tuple[int, Counter[str]]] = {}
        self._lock = asyncio.Lock()

    async def rejections(self, tenant: str) -> Counter[str]:
        """Claim type → rejections recorded for ``tenant`` so far."""
        async with self._lock:
            version, counts = self._seen.get(tenant, (0, Counter()))
            for event in await self.log.read_stream(learning_stream(tenant), version + 1):
                data = event.data if isinstance(event.data, dict) else {}
                counts[str(data.get("claim_type", ""))] += 1
                version = max(version, event.streamversion or 0)
            self._seen[tenant] = (version, counts)
            return Counter(counts)


# -- recording a phase's work -------------------------------------------------------------------


class PhaseDesk:
    """Appends phase triggers with their work to a user's stream: read, compute, append at the
    version read (a concurrent append by another replica makes it read and compute again).

    Args:
        ctx: The workflow service's context.
        rules: Thresholds and rates (default: from the service's settings).
    """

    def __init__(self, ctx: WorkflowContext, rules: PhaseRules | None = None) -> None:
        self.ctx = ctx
        self.log: EventLog = ctx.log
        self.rules = rules or PhaseRules.of(ctx.settings)
        self.learning = RejectionLearning(ctx.log)
        self._states: OrderedDict[tuple[str, str], UserClaims] = OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def state(self, tenant: str, user_id: str) -> UserClaims:
        """The user's claims, ledger and stream version, as the log holds them now."""
        key = (tenant, user_id)
        async with self._lock(key):
            return await self._refresh(key)

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _refresh(self, key: tuple[str, str]) -> UserClaims:
        state = self._states.pop(key, None) or UserClaims()
        for event in await self.log.read_stream(phases_stream(*key), state.version + 1):
            state.apply(event)
        self._states[key] = state
        if len(self._states) > _MAX_STATES:
            old, _ = self._states.popitem(last=False)
            lock = self._locks.get(old)
            if lock is not None and not lock.locked():
                del self._locks[old]
        return state

    async def events(self, tenant: str, user_id: str) -> list[CloudEvent]:
        return await self.log.read_stream(phases_stream(tenant, user_id))

    async def record(
        self,
        tenant: str,
        user_id: str,
        build: Callable[[UserClaims], Sequence[tuple[str, msgspec.Struct]]],
        *,
        source: str = SOURCE,
        sync_id: str = "",
        causation: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> list[CloudEvent]:
        """Append what ``build`` makes of the user's state, at the state's version.

        Args:
            build: The user's claims → (type, data) to append; may raise (nothing is written).
            key: Makes the event ids deterministic (``<key>/<index>``): the same key appends
                once, whichever replica or redelivery comes first (an empty list when done).
            time: The events' time (with ``key``: the time of the event they answer).

        Raises:
            PhaseInputError, ClaimConflict, KeyError: from ``build``.
        """
        stream_key = (tenant, user_id)
        for _ in range(20):
            if key is not None and await self.log.get_event(_event_id(f"{key}/0")) is not None:
                return []
            async with self._lock(stream_key):
                state = await self._refresh(stream_key)
                emitted = build(state)
                if not emitted:
                    return []
                events = [
                    new_event(
                        kind,
                        data,
                        source=source,
                        id=_event_id(f"{key}/{i}") if key is not None else None,
                        time=time,
                        subject=user_id,
                        correlationid=sync_id or causation or None,
                        causationid=causation,
                        tenant=tenant,
                    )
                    for i, (kind, data) in enumerate(emitted)
                ]
                try:
                    stored = await self.log.append(
                        phases_stream(tenant, user_id), events, expected_version=state.version
                    )
                except (ConcurrencyError, DuplicateEventError):
                    continue  # another replica appended first: read again, and maybe find it done
                for event in stored:
                    state.apply(event)
            _count(stored)
            return stored
        raise RuntimeError(f"the phase stream of user {user_id!r} kept changing: nothing was recorded")

    async def trigger(
        self,
        tenant: str,
        user_id: str,
        phase: int,
        *,
        sync_id: str = "",
        metadata: dict[str, Any] | None = None,
        origin: str = "api",
        source: str = SOURCE,
        causation: str | None = None,
        key: str | None = None,
        time: str | None = None,
        strict: bool = True,
        before: Sequence[tuple[str, msgspec.Struct]] = (),
    ) -> list[CloudEvent]:
        """Record a trigger of ``phase`` for the user, with its work, in one batch.

        Args:
            strict: Raise when the work cannot be done (an API caller is told, nothing is
                recorded); False records the trigger and a failed update with the reason (a
                trigger from outside or from the chain has nobody else to tell).
            before: Events to record ahead of the trigger in the same batch.

        Raises:
            PhaseInputError, ClaimConflict: ``strict`` and the trigger does not fit.
        """
        trigger = PhaseTriggered(phase=phase, user_id=user_id, sync_id=sync_id, metadata=dict(metadata or {}))
        counts = await self.learning.rejections(tenant)

        def penalty(claim_type: str) -> Decimal:
            return self.rules.penalty(counts[claim_type])

        def build(state: UserClaims) -> list[tuple[str, msgspec.Struct]]:
            try:
                done = work(
                    trigger,
                    state,
                    self.rules,
                    penalty,
                    origin=origin,
                    confirm_path=lambda claim_id: confirm_path(user_id, claim_id),
                )
            except (PhaseInputError, ClaimConflict) as exc:
                if strict:
                    raise
                claim_id = trigger.metadata.get("claim_id")
                failed = phase_update(
                    user_id,
                    phase,
                    "failed",
                    "work",
                    str(exc),
                    claim_id=claim_id if isinstance(claim_id, str) else "",
                )
                done = [failed]
            return [*before, (PHASE_TRIGGERED, trigger), *done]

        return await self.record(
            tenant, user_id, build, source=source, sync_id=sync_id, causation=causation, key=key, time=time
        )


def confirm_path(user_id: str, claim_id: str) -> str:
    return f"/api/v1/users/{user_id}/claims/{claim_id}/confirm"


def _count(stored: Sequence[CloudEvent]) -> None:
    for event in stored:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == claims.ROUTED:
            ROUTED.labels(str(data.get("route"))).inc()
        elif event.type == claims.UPDATED:
            UPDATES.labels(str(data.get("phase")), str(data.get("part")), str(data.get("status"))).inc()


# -- reacting to the log -------------------------------------------------------------------------


class PhaseReactor:
    """Follows the log on every replica; what it records has deterministic ids, so each reaction
    happens once whichever replica comes first, and a restart repeats nothing.

    - A phase's execution ended: the user's ``phase.updated`` (workflow), and for phases 1-3 when
      it completed, the next phase's trigger with its work (seed 001's 1 → 2 → 3 → 4).
    - A phase trigger's workflow start was refused (rate, depth): a failed ``phase.updated``.
    - An external ``claim.submitted`` / ``claim.rejected`` / ``payout.received``: phase 5, 6, 7.
    - A rejection recorded: its copy in the learning stream.
    - A payout recorded: the claim's proof root (``claim.proved``).
    """

    TYPES: Final = frozenset({*_ENDINGS, _TRIGGER_REFUSED, *EXT_PHASES, claims.DECIDED, claims.PAID})

    def __init__(self, ctx: WorkflowContext, desk: PhaseDesk) -> None:
        self.ctx = ctx
        self.desk = desk
        self.handled = 0
        self.position = 0
        """The log position of the last event handled (for tests and start-up checks)."""

    async def handle(self, event: CloudEvent) -> None:
        """React to one event of the log (see the class)."""
        if event.type in _ENDINGS:
            await self._ended(event)
        elif event.type == _TRIGGER_REFUSED:
            await self._refused(event)
        elif event.type in EXT_PHASES and (event.streamid or "").startswith("ext-"):
            await self._external(event)
        elif event.type == claims.DECIDED:
            await self._learn(event)
        elif event.type == claims.PAID:
            await self._prove(event)
        self.handled += 1
        self.position = max(self.position, event.position or 0)

    async def _done(self, key: str) -> bool:
        """Whether the reaction recorded under ``key`` is in the log already (a replay, another replica)."""
        return await self.ctx.log.get_event(_event_id(f"{key}/0")) is not None

    async def _ended(self, event: CloudEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        phase = phase_of_workflow(str(data.get("workflow_id", "")))
        execution_id = str(data.get("execution_id", ""))
        if phase is None or not execution_id or await self._done(f"ended/{event.id}"):
            return
        state = self.ctx.engine.get(execution_id) or await self.ctx.engine.load(execution_id)
        given = state.input if state is not None and isinstance(state.input, dict) else {}
        user_id = given.get("user_id")
        if state is None or not isinstance(user_id, str) or not _USER.match(user_id):
            return
        outcome = _ENDINGS[event.type]
        status = "completed" if outcome == "completed" else "failed"
        reason = data.get("error") or data.get("reason") or ""
        message = f"phase {phase} ({PHASES[phase]}) {outcome}" + (f": {reason}" if reason else "")
        update = phase_update(user_id, phase, status, "workflow", message, execution_id=execution_id)
        sync_id = given.get("sync_id") if isinstance(given.get("sync_id"), str) else ""
        metadata = given.get("metadata") if isinstance(given.get("metadata"), dict) else {}
        key = f"ended/{event.id}"
        if outcome == "completed" and phase in CHAINED:
            await self.desk.trigger(
                state.tenant,
                user_id,
                CHAINED[phase],
                sync_id=sync_id or "",
                metadata=metadata,
                origin="chain",
                causation=event.id,
                key=key,
                time=event.time,
                strict=False,
                before=[update],
            )
            return
        await self.desk.record(
            state.tenant,
            user_id,
            lambda _: [update],
            sync_id=sync_id or "",
            causation=event.id,
            key=key,
            time=event.time,
        )

    async def _refused(self, event: CloudEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if not str(data.get("trigger_id", "")).startswith("phase_"):
            return
        cause = await self.ctx.log.get_event(str(data.get("event_id", "")))
        if cause is None or cause.type != PHASE_TRIGGERED or not isinstance(cause.data, dict):
            return
        located = user_of_stream(cause.streamid or "", cause.tenant)
        if located is None:
            return
        phase = int(cause.data.get("phase", 0))
        message = f"phase {phase}'s workflow was not started: {data.get('message') or data.get('reason')}"
        update = phase_update(located[1], phase, "failed", "workflow", message)
        await self.desk.record(
            *located, lambda _: [update], causation=event.id, key=f"refused/{event.id}", time=event.time
        )

    async def _external(self, event: CloudEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        user_id = data.get("user_id")
        source = (event.streamid or "").removeprefix("ext-")
        if not isinstance(user_id, str) or not _USER.match(user_id):
            logger.warning("external %s %s names no valid user_id: no phase was triggered", event.type, event.id)
            return
        sync_id = data.get("sync_id") if isinstance(data.get("sync_id"), str) else ""
        metadata = {k: v for k, v in data.items() if k not in ("user_id", "sync_id")}
        await self.desk.trigger(
            event.tenant or PLATFORM_TENANT,
            user_id,
            EXT_PHASES[event.type],
            sync_id=sync_id or "",
            metadata=metadata,
            origin=f"ext:{source}",
            source=f"{SOURCE}/ext/{source}",
            causation=event.id,
            key=f"ext/{event.id}",
            time=event.time,
            strict=False,
        )

    async def _learn(self, event: CloudEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        located = user_of_stream(event.streamid or "", event.tenant)
        if data.get("decision") != "rejected" or located is None or await self._done(f"learn/{event.id}"):
            return
        tenant, user_id = located
        learned = LearningRejection(
            user_id=user_id,
            claim_id=str(data.get("claim_id", "")),
            claim_type=str(data.get("claim_type", "")),
            reason=str(data.get("reason", "")),
            decided_event_id=event.id,
        )
        record = new_event(
            "nexus.workflow.learning.rejection",
            learned,
            source=SOURCE,
            id=_event_id(f"learn/{event.id}/0"),
            time=event.time,
            subject=learned.claim_type,
            correlationid=event.correlationid,
            causationid=event.id,
            tenant=tenant,
        )
        # The same id and content again writes nothing: a replay or a second replica is a no-op.
        with contextlib.suppress(DuplicateEventError):
            await self.ctx.log.append(learning_stream(tenant), [record])

    async def _prove(self, event: CloudEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        located = user_of_stream(event.streamid or "", event.tenant)
        claim_id = data.get("claim_id")
        if located is None or not isinstance(claim_id, str) or await self._done(f"proved/{event.id}"):
            return
        tenant, user_id = located
        mine = claim_events(await self.desk.events(tenant, user_id), claim_id)
        state = await self.desk.state(tenant, user_id)
        claim = state.claims.get(claim_id)
        if claim is None or not mine:
            return
        packet = proof_packet(user_id, claim, mine)
        root, created = packet["manifest"]["root"], packet["manifest"]["created"]
        proof = claims.proved(user_id, claim_id, root, [e.id for e in mine], created)
        await self.desk.record(
            tenant,
            user_id,
            lambda _: [proof],
            sync_id=event.correlationid or "",
            causation=event.id,
            key=f"proved/{event.id}",
            time=event.time,
        )


def claim_events(events: Sequence[CloudEvent], claim_id: str) -> list[CloudEvent]:
    """The events of one claim a proof packet covers, in stream order."""
    return [
        e for e in events if e.type in CLAIM_EVENTS and isinstance(e.data, dict) and e.data.get("claim_id") == claim_id
    ]


PHASE_DESK = web.AppKey("nexus.workflow.phase_desk", PhaseDesk)
PHASE_REACTOR = web.AppKey("nexus.workflow.phase_reactor", PhaseReactor)


# -- HTTP -----------------------------------------------------------------------------------------


class PhaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /api/v1/workflow/phase/{n}``: the user, an optional sync id, and the phase's fields
    (every other field is passed on to the phase as ``metadata``).

    Phase 4: ``matches``, a list of ``{claim_id, confidence (0-1), claim_type?, amount?, evidence?}``.
    Phase 5: ``claim_id`` (``claim_type``, ``submission_id`` optional). Phase 6: ``claim_id``,
    ``reason``. Phase 7: ``claim_id``, ``amount`` (a decimal string, cents at most),
    ``currency`` (default ``USD``), ``payout_id`` optional.
    """

    user_id: Annotated[str, msgspec.Meta(pattern=_USER.pattern)]
    """The user the phase runs for, in the caller's namespace: another client's user of the same
    id is another user."""
    sync_id: str = ""
    """The sync or job the phase belongs to (the correlation id of its events)."""


class PhaseAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The phase trigger and its work are recorded; the phase's workflow starts from it."""

    success: bool
    phase: int
    name: str
    eventId: str
    updates: list[dict[str, Any]] = []
    """What the phase's work recorded for the user (``phase.updated`` and claim events)."""


class PhaseExecution(msgspec.Struct, frozen=True, kw_only=True):
    phase: int
    execution_id: str
    status: str


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    time: str
    type: str
    stream: str | None
    position: int | None
    data: Any


class PhaseAudit(msgspec.Struct, frozen=True, kw_only=True):
    """Every phase trigger and phase execution event of one user of the caller, in log order."""

    user_id: str
    executions: list[PhaseExecution]
    auditTrail: list[AuditEntry]


class ClaimsBody(msgspec.Struct, frozen=True, kw_only=True):
    """A user's claims and where each stands."""

    user_id: str
    claims: list[dict[str, Any]]


class LedgerBody(msgspec.Struct, frozen=True, kw_only=True):
    """A user's ledger: one entry per payout (amount, fee, net), and the totals per currency."""

    user_id: str
    fee_rate: str
    rounding: str
    entries: list[dict[str, Any]]
    totals: dict[str, dict[str, str]]


class Confirmed(msgspec.Struct, frozen=True, kw_only=True):
    """The confirmation is recorded, with phase 5 (the submission) for the claim."""

    success: bool
    claim_id: str
    status: str
    eventId: str


class ProofPacket(msgspec.Struct, frozen=True, kw_only=True):
    """A claim's proof packet (format ``nexus.proof.claim/1``; check it with ``nexus proof verify``)."""

    format: str
    user_id: str
    claim_id: str
    status: str
    payout: dict[str, str]
    manifest: dict[str, Any]
    events: list[dict[str, str]]
    proofs: list[dict[str, Any]]
    recorded: dict[str, Any] | None


def _error(status: int, message: str) -> web.Response:
    # Seed 001's {"success": false, "error"} and the platform's {"error", "message"} in one body.
    return json_response({"success": False, "error": message, "message": message}, status=status)


def _tenant_of(request: web.Request) -> str:
    """The caller's tenant; an admin may name another with ``?tenant=``."""
    info = request[AUTH]
    return (request.query.get("tenant") or info.tenant) if info.is_admin else info.tenant


async def user_has_phases(ctx: WorkflowContext, tenant: str, user_id: str) -> bool:
    """Whether ``tenant`` has a user ``user_id`` (a phase was triggered for it)."""
    return bool(await ctx.log.stream_version(phases_stream(tenant, user_id)))


def _update_view(event: CloudEvent) -> dict[str, Any]:
    data = event.data if isinstance(event.data, dict) else {}
    shown = {k: v for k, v in data.items() if k not in ("user_id", "evidence", "metadata")}
    return {"type": event.type.removeprefix("nexus.workflow."), "event_id": event.id, **shown}


def install(service: Service, ctx: WorkflowContext, *, directory: Path = PHASES_DIR) -> None:
    """Add the phase and claim routes; register the phase workflows and triggers at start-up, and
    follow the log with the phase reactor.

    The phase workflows run on the platform's ``core`` service; with ``NEXUS_SERVICE_INTEGRATIONS``
    set each one also mirrors its phase to that service.
    """
    app = service.app
    ready: dict[str, Any] = {"registered": False, "reason": "the phase workflows are not registered yet"}
    desk = PhaseDesk(ctx)
    reactor = PhaseReactor(ctx, desk)
    app[PHASE_DESK] = desk
    app[PHASE_REACTOR] = reactor
    admin_query = {"tenant": "admins only: the tenant whose user to read (default: their own)"}

    async def known_user(request: web.Request, route: str) -> tuple[str, str]:
        """The caller's (tenant, user) named by the path; 404 when the tenant has no such user."""
        user_id = request.match_info["user_id"]
        tenant = _tenant_of(request)
        if not _USER.match(user_id) or not await user_has_phases(ctx, tenant, user_id):
            raise HTTPError(404, f"no user {user_id!r}")
        info = request[AUTH]
        if tenant != info.tenant:
            await service.audit_admin(info, request.method, route, f"user {user_id}", tenant)
        return tenant, user_id

    @service.route(
        "POST",
        "/api/v1/workflow/phase/{n}",
        summary="Trigger phase n (1-7) of the seven-phase pipeline for one of the caller's users",
        request=PhaseRequest,
        response=PhaseAccepted,
        status=202,
        responses={
            400: "n is not 1-7, or the body lacks a field the phase needs (the message names it)",
            409: "The claim's state does not allow it (a paid claim paid again, a submitted one submitted again)",
            503: "The phase workflows are not ready",
        },
        tags=["phases"],
        auth="client",
    )
    async def trigger_phase(request: web.Request) -> web.Response:
        try:
            phase = parse_phase(request.match_info["n"])
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            body = msgspec.json.decode(await request.read())
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return _error(400, "the body must be a JSON object with user_id")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object with user_id")
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not _USER.match(user_id):
            return _error(400, "user_id is required: 1-200 letters, digits or _ - . @ :")
        sync_id = body.get("sync_id", "")
        if not isinstance(sync_id, str):
            return _error(400, "sync_id must be a string")
        metadata = {k: v for k, v in body.items() if k not in ("user_id", "sync_id")}
        try:
            check_input(phase, metadata)
        except PhaseInputError as exc:
            return _error(400, str(exc))
        if not ready["registered"]:
            return _error(503, ready["reason"])
        tenant = request[AUTH].tenant
        try:
            stored = await desk.trigger(tenant, user_id, phase, sync_id=sync_id, metadata=metadata)
        except PhaseInputError as exc:
            return _error(400, str(exc))
        except ClaimConflict as exc:
            return _error(409, str(exc))
        [trigger] = [e for e in stored if e.type == PHASE_TRIGGERED and (e.data or {}).get("phase") == phase][:1]
        updates = [_update_view(e) for e in stored if e.id != trigger.id]
        accepted = PhaseAccepted(success=True, phase=phase, name=PHASES[phase], eventId=trigger.id, updates=updates)
        return json_response(accepted, status=202)

    @service.route(
        "POST",
        "/api/v1/users/{user_id}/claims/{claim_id}/confirm",
        summary="Confirm a claim phase 4 asked about (a smart prompt): phase 5 submits it",
        response=Confirmed,
        status=202,
        responses={
            404: "The caller has no such user, or the user no such claim",
            409: "The claim is not awaiting a confirmation",
        },
        tags=["phases"],
        auth="client",
    )
    async def confirm(request: web.Request) -> web.Response:
        tenant, user_id = await known_user(request, "/api/v1/users/{user_id}/claims/{claim_id}/confirm")
        claim_id = request.match_info["claim_id"]
        key_id = request[AUTH].key_id

        def build(state: UserClaims) -> list[tuple[str, msgspec.Struct]]:
            return confirmation(user_id, claim_id, state, key_id)

        try:
            stored = await desk.record(tenant, user_id, build)
        except KeyError:
            return _error(404, f"no claim {claim_id!r}")
        except ClaimConflict as exc:
            return _error(409, str(exc))
        [trigger] = [e for e in stored if e.type == PHASE_TRIGGERED]
        return json_response(
            Confirmed(success=True, claim_id=claim_id, status="submitted", eventId=trigger.id), status=202
        )

    @service.route(
        "GET",
        "/api/v1/users/{user_id}/claims",
        summary="One of the caller's users' claims and where each stands",
        response=ClaimsBody,
        responses={404: "The caller has no such user"},
        tags=["phases"],
        auth="client",
        query=admin_query,
    )
    async def list_claims(request: web.Request) -> web.Response:
        tenant, user_id = await known_user(request, "/api/v1/users/{user_id}/claims")
        state = await desk.state(tenant, user_id)
        return json_response(ClaimsBody(user_id=user_id, claims=[c.view() for c in state.claims.values()]))

    @service.route(
        "GET",
        "/api/v1/users/{user_id}/ledger",
        summary="One of the caller's users' ledger: payouts, fees and totals",
        response=LedgerBody,
        responses={404: "The caller has no such user"},
        tags=["phases"],
        auth="client",
        query=admin_query,
    )
    async def ledger(request: web.Request) -> web.Response:
        tenant, user_id = await known_user(request, "/api/v1/users/{user_id}/ledger")
        state = await desk.state(tenant, user_id)
        totals = {cur: {k: str(v) for k, v in t.items()} for cur, t in state.totals.items()}
        body = LedgerBody(
            user_id=user_id,
            fee_rate=str(desk.rules.fee_rate),
            rounding=claims.ROUNDING,
            entries=list(state.ledger),
            totals=totals,
        )
        return json_response(body)

    @service.route(
        "GET",
        "/api/v1/users/{user_id}/claims/{claim_id}/proof",
        summary="A claim's proof packet: its events, a Merkle manifest over them and inclusion proofs",
        response=ProofPacket,
        responses={404: "The caller has no such user, or the user no such claim"},
        tags=["phases"],
        auth="client",
        query=admin_query,
    )
    async def proof(request: web.Request) -> web.Response:
        tenant, user_id = await known_user(request, "/api/v1/users/{user_id}/claims/{claim_id}/proof")
        claim_id = request.match_info["claim_id"]
        events = await desk.events(tenant, user_id)
        state = await desk.state(tenant, user_id)
        claim = state.claims.get(claim_id)
        mine = claim_events(events, claim_id)
        if claim is None or not mine:
            return _error(404, f"no claim {claim_id!r}")
        recorded = next(
            (e for e in events if e.type == claims.PROVED and (e.data or {}).get("claim_id") == claim_id), None
        )
        if recorded is not None:
            # The packet covers what the root was recorded over (a paid claim's events are final).
            covered = set((recorded.data or {}).get("event_ids") or [])
            mine = [e for e in mine if e.id in covered]
        return json_response(proof_packet(user_id, claim, mine, recorded))

    @service.route(
        "GET",
        "/api/v1/workflow/phases/{user_id}/audit",
        summary="The phase audit trail of one of the caller's users",
        response=PhaseAudit,
        responses={404: "The caller has no such user (no phase was triggered for it)"},
        tags=["phases"],
        auth="client",
        query={"tenant": "admins only: the tenant whose user to read (default: their own)"},
    )
    async def audit(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        tenant = _tenant_of(request)
        events = list(await ctx.log.read_stream(phases_stream(tenant, user_id)))
        executions: list[PhaseExecution] = []
        for n in PHASES:
            for state in ctx.engine.list(workflow_id=f"phase_{n}", limit=10_000, tenant=tenant):
                if isinstance(state.input, dict) and state.input.get("user_id") == user_id:
                    events.extend(await ctx.engine.history(state.execution_id))
                    executions.append(PhaseExecution(phase=n, execution_id=state.execution_id, status=state.status))
        if not events:
            return _error(404, f"no user {user_id!r}")
        info = request[AUTH]
        if tenant != info.tenant:
            await service.audit_admin(info, "GET", "/api/v1/workflow/phases/{user_id}/audit", f"user {user_id}", tenant)
        events.sort(key=lambda e: e.position or 0)
        trail = [
            AuditEntry(id=e.id, time=e.time, type=e.type, stream=e.streamid, position=e.position, data=e.data)
            for e in events
        ]
        return json_response(PhaseAudit(user_id=user_id, executions=executions, auditTrail=trail))

    async def register(app: web.Application) -> Any:
        from nexus.services.workflow.triggers import TRIGGER_ENGINE

        services = getattr(ctx.settings, "services", {}) or {}
        mirror = INTEGRATIONS_SERVICE in services
        for path in sorted((directory / "schemas").glob("*.y*ml")):
            await ctx.registry.register_schema(path.read_bytes(), source=f"bundled:{path.name}", only_if_changed=True)
        for name, document in phase_workflows(directory, mirror=mirror):
            await ctx.registry.register_workflow(document, source=f"bundled:{name}", only_if_changed=True)
        logger.info(
            "phase workflows registered%s",
            " (mirrored to the integrations service)" if mirror else " (on the core service)",
        )
        if TRIGGER_ENGINE in app:
            engine = app[TRIGGER_ENGINE]
            await engine.load_directory(directory / "triggers")
            # Earlier releases chained every phase to the next with triggers: 5, 6 and 7 now
            # wait for their own triggers, and the reactor chains 1 → 4.
            for stale in _STALE_TRIGGERS:
                if engine.get(PLATFORM_TENANT, stale) is not None:
                    await engine.remove(stale)
            ready["registered"] = True
        else:
            ready["reason"] = "the phase pipeline needs the trigger module"

        async def offer(event: CloudEvent) -> None:
            for delay in (0.1, 0.5, 2.0, None):
                try:
                    await reactor.handle(event)
                    return
                except Exception:
                    if delay is None:
                        logger.exception("the phase reactor could not handle event %s (%s)", event.id, event.type)
                        return
                    await asyncio.sleep(delay)

        # Every replica follows the log from its start: what the reactor records has
        # deterministic ids, so an event handled before (here or elsewhere) records nothing.
        task = asyncio.create_task(
            tail(ctx.log, offer, start=1, name="phase reactor", types=PhaseReactor.TYPES), name="workflow-phases"
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # Runs after the trigger module's start-up (install order: triggers, then phases).
    app.cleanup_ctx.append(register)


_STALE_TRIGGERS: Final = (
    "phase_2_after_phase_1",
    "phase_3_after_phase_2",
    "phase_4_after_phase_3",
    "phase_5_after_phase_4",
    "phase_6_after_phase_5",
    "phase_7_after_phase_6",
)
