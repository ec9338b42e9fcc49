"""Pure decisions of the granulator: folding a handshake's events, estimating, accepting or rejecting.

No I/O here: the worker reads the log, calls these functions, and appends what they return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from nexus.proto import PLATFORM_TENANT, CloudEvent, parse_rfc3339
from nexus.proto.events import granulator as ev
from nexus.services.granulator.generators.builtin import (
    BODY_SECTIONS,
    SUBSECTIONS,
    TYPE_WORD_FACTOR,
    WORDS_PER_SUBSECTION,
)
from nexus.services.granulator.model import (
    DEPTHS,
    STAGES,
    STRUCTURE_TYPES,
    Estimate,
    GranulationInput,
    GranulatorError,
    HandshakeRequest,
    InvalidRequestError,
    Requirements,
    ValidationConfig,
    decode_request,
    normalise_input,
)
from nexus.services.granulator.validation import check_config

__all__ = [
    "ACCEPTED",
    "ACKNOWLEDGED",
    "COMPLETED",
    "EVENT_TYPES",
    "EXPIRED",
    "FAILED",
    "PROGRESSED",
    "REJECTED",
    "VALIDATED",
    "Caller",
    "HandshakeState",
    "Limits",
    "Rejection",
    "decide_handshake",
    "estimate",
    "fold",
    "stream_id",
]

ACCEPTED = "nexus.granulator.handshake.accepted"
REJECTED = "nexus.granulator.handshake.rejected"
PROGRESSED = "nexus.granulator.granulation.progressed"
VALIDATED = "nexus.granulator.validation.completed"
COMPLETED = "nexus.granulator.granulation.completed"
FAILED = "nexus.granulator.granulation.failed"
ACKNOWLEDGED = "nexus.granulator.handshake.acknowledged"
EXPIRED = "nexus.granulator.handshake.expired"
EVENT_TYPES = (ACCEPTED, REJECTED, PROGRESSED, VALIDATED, COMPLETED, FAILED, ACKNOWLEDGED, EXPIRED)

CLOSED = ("rejected", "acknowledged", "expired")
"""States in which a handshake holds no capacity."""


def stream_id(handshake_id: str) -> str:
    """The log stream of one handshake."""
    return f"granulation-{handshake_id}"


@dataclass(frozen=True)
class Limits:
    """What one replica accepts."""

    capacity: int
    """Concurrent jobs (open handshakes) at most."""
    max_memory_mb: int
    max_timeout_ms: int
    min_timeout_ms: int = 100
    attempt_ms: int = 20
    """Expected duration of one generation attempt (the generator's typical latency)."""
    lease_grace_ms: int = 60_000
    """How long after ``timeout_ms`` an unacknowledged handshake keeps its capacity."""


@dataclass(frozen=True)
class Caller:
    """Who calls the granulator, and so which handshakes and Raw references it may use.

    Attributes:
        tenant: The tenant it acts for: a client key's owner, a delegated token's tenant, a
            command's tenant; ``platform`` for an external worker's token.
        worker_id: The worker the call comes from (a worker token's owner, a command's
            source); empty for a client, who is bound by its tenant alone.
        is_admin: An operator's key: every tenant's handshakes.
    """

    tenant: str
    worker_id: str = ""
    is_admin: bool = False

    @property
    def label(self) -> str:
        """The worker id a handshake records for this caller (``client/<tenant>`` for a client)."""
        return self.worker_id or f"client/{self.tenant}"

    def may_use(self, state: HandshakeState) -> bool:
        """Whether the caller may see, process or acknowledge the handshake: its tenant's, and its
        own as a worker. Anything else is answered exactly as a handshake that does not exist."""
        if self.is_admin:
            return True
        if state.tenant != self.tenant:
            return False
        return not self.worker_id or state.worker_id == self.worker_id


@dataclass
class HandshakeState:
    """A handshake folded from its stream."""

    handshake_id: str
    execution_id: str
    status: str
    """``accepted``, ``rejected``, ``processing``, ``completed``, ``failed``, ``acknowledged``, ``expired``."""
    replica_id: str = ""
    worker_id: str = ""
    tenant: str = PLATFORM_TENANT
    """The tenant the handshake was made for (the envelope's ``tenant`` of its first event)."""
    accepted: ev.GranulatorHandshakeAccepted | None = None
    rejected: ev.GranulatorHandshakeRejected | None = None
    completed: ev.GranulatorCompleted | None = None
    failed: ev.GranulatorFailed | None = None
    acknowledged: ev.GranulatorAcknowledged | None = None
    validations: list[ev.GranulatorValidationResult] = field(default_factory=list)
    progress: int = 0
    version: int = 0
    accepted_at: float = 0.0
    """Acceptance time, seconds since the epoch."""

    @property
    def holds_capacity(self) -> bool:
        return self.status not in CLOSED

    def lease_deadline(self) -> float:
        """When the handshake's capacity is released without an acknowledgement (epoch seconds)."""
        lease = self.accepted.lease_ms if self.accepted else 0
        return self.accepted_at + lease / 1000


def _epoch(rfc3339: str) -> float:
    return parse_rfc3339(rfc3339).timestamp()


def fold(events: list[CloudEvent]) -> HandshakeState | None:
    """The state of a handshake from its stream's events (None for an empty stream)."""
    state: HandshakeState | None = None
    for event in events:
        data = event.data
        if event.type == ACCEPTED:
            accepted = msgspec.convert(data, ev.GranulatorHandshakeAccepted)
            state = HandshakeState(
                handshake_id=accepted.handshake_id,
                execution_id=accepted.execution_id,
                status="accepted",
                replica_id=accepted.replica_id,
                worker_id=accepted.worker_id,
                tenant=event.tenant or PLATFORM_TENANT,
                accepted=accepted,
                accepted_at=_epoch(event.time),
            )
        elif event.type == REJECTED:
            rejected = msgspec.convert(data, ev.GranulatorHandshakeRejected)
            state = HandshakeState(
                handshake_id=rejected.handshake_id,
                execution_id=rejected.execution_id,
                status="rejected",
                replica_id=rejected.replica_id,
                worker_id=rejected.worker_id,
                tenant=event.tenant or PLATFORM_TENANT,
                rejected=rejected,
            )
        elif state is None:
            continue
        elif event.type == PROGRESSED:
            progressed = msgspec.convert(data, ev.GranulatorProgressed)
            state.progress = max(state.progress, progressed.percent)
            if progressed.step == "started" and state.status in ("accepted", "failed"):
                state.status = "processing"
                state.failed = None
        elif event.type == VALIDATED:
            state.validations.append(msgspec.convert(data, ev.GranulatorValidated).result)
        elif event.type == COMPLETED:
            state.completed = msgspec.convert(data, ev.GranulatorCompleted)
            state.status = "completed"
            state.progress = 100
        elif event.type == FAILED:
            state.failed = msgspec.convert(data, ev.GranulatorFailed)
            state.status = "failed"
        elif event.type == ACKNOWLEDGED:
            state.acknowledged = msgspec.convert(data, ev.GranulatorAcknowledged)
            state.status = "acknowledged"
        elif event.type == EXPIRED:
            if state.status not in CLOSED:
                state.status = "expired"
        state.version = event.streamversion or state.version + 1
    return state


def estimate(inp: GranulationInput, validation: ValidationConfig, limits: Limits) -> Estimate:
    """What a job will take: sections, words, memory and time (every validation retry counted)."""
    level = DEPTHS[str(inp.depth)]
    sections = BODY_SECTIONS[level] + 2 + (1 if level >= 2 else 0)
    words = int(sections * SUBSECTIONS[level] * WORDS_PER_SUBSECTION[level] * TYPE_WORD_FACTOR[inp.structure_type])
    attempts = 1 + (validation.max_retries if validation.enabled else 0)
    # A structure is small; the memory is the interpreter's working set plus the generator's buffers.
    memory = 32 + 2 * sections * SUBSECTIONS[level]
    return Estimate(
        sections=sections,
        estimated_words=words,
        memory_mb=memory,
        duration_ms=attempts * limits.attempt_ms,
        attempts=attempts,
    )


@dataclass(frozen=True)
class Rejection:
    """Why a handshake is refused."""

    code: str
    reason: str


def decide_handshake(
    body: dict[str, Any],
    *,
    execution_id: str,
    handshake_id: str,
    worker_id: str,
    replica_id: str,
    limits: Limits,
    open_jobs: int,
    default_validation: ValidationConfig,
) -> ev.GranulatorHandshakeAccepted | ev.GranulatorHandshakeRejected:
    """Accept or reject a handshake request.

    Raises:
        InvalidRequestError: the body is malformed (not the shape of a handshake): nothing is recorded.
    """
    request: HandshakeRequest = decode_request(body, HandshakeRequest)
    execution_id = request.execution_id or execution_id
    if not execution_id:
        raise InvalidRequestError("$.execution_id: required (in the body or the X-Execution-ID header)")

    def reject(code: str, reason: str) -> ev.GranulatorHandshakeRejected:
        return ev.GranulatorHandshakeRejected(
            handshake_id=handshake_id,
            execution_id=execution_id,
            worker_id=worker_id,
            replica_id=replica_id,
            code=code,
            reason=reason,
        )

    if request.stage not in STAGES:
        return reject("unknown_stage", f"$.stage: this worker handles {', '.join(STAGES)}, not {request.stage!r}")
    structure_type = request.input.get("structure_type")
    if isinstance(structure_type, str) and structure_type not in STRUCTURE_TYPES:
        return reject(
            "unknown_structure_type",
            f"$.input.structure_type: {structure_type!r} is not one of {', '.join(STRUCTURE_TYPES)}",
        )
    try:
        inp = normalise_input(decode_request(request.input, GranulationInput))
        validation = request.validation
        if validation is None and isinstance(request.input.get("validation"), dict):
            validation = decode_request(request.input["validation"], ValidationConfig)
        validation = validation or default_validation
        check_config(validation)
    except GranulatorError as exc:
        message = (
            exc.message
            if exc.message.startswith("$.input") or exc.message.startswith("$.validation")
            else ("$.input" + exc.message[1:] if exc.message.startswith("$") else exc.message)
        )
        return reject("invalid_input", message)
    req: Requirements = request.requirements
    est = estimate(inp, validation, limits)
    if not est.memory_mb <= req.memory_mb <= limits.max_memory_mb:
        return reject(
            "requirement_out_of_bounds",
            f"$.requirements.memory_mb: {req.memory_mb} is outside {est.memory_mb}..{limits.max_memory_mb} "
            f"(the job needs {est.memory_mb} MiB; this replica grants at most {limits.max_memory_mb})",
        )
    low = max(limits.min_timeout_ms, est.duration_ms)
    if not low <= req.timeout_ms <= limits.max_timeout_ms:
        return reject(
            "requirement_out_of_bounds",
            f"$.requirements.timeout_ms: {req.timeout_ms} is outside {low}..{limits.max_timeout_ms} "
            f"(the job is expected to take {est.duration_ms} ms)",
        )
    if open_jobs >= limits.capacity:
        return reject(
            "over_capacity",
            f"this replica runs {open_jobs} of {limits.capacity} jobs; try another replica or later",
        )
    return ev.GranulatorHandshakeAccepted(
        handshake_id=handshake_id,
        execution_id=execution_id,
        worker_id=worker_id,
        replica_id=replica_id,
        stage=request.stage,
        input=msgspec.to_builtins(inp),
        requirements=req,
        estimate=est,
        validation=validation,
        lease_ms=req.timeout_ms + limits.lease_grace_ms,
    )
