"""Events produced by the granulator service.

One stream per handshake, ``granulation-<handshake_id>``: accepted (or rejected), the progress
of processing, validation attempts, completed (or failed), acknowledged (or expired). Folding a
stream gives the handshake's whole state, so any replica can rebuild it from the log.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nexus.proto._catalog import event_type


class GranulatorRequirements(msgspec.Struct, frozen=True, kw_only=True):
    """Resources the caller grants the job (seed 002, phase 5)."""

    memory_mb: int
    """Memory the caller grants, in MiB."""
    timeout_ms: int
    """How long the caller waits for the result, in milliseconds."""


class GranulatorEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """What the replica expects the job to take, computed at the handshake."""

    sections: int
    """Expected number of top-level sections."""
    estimated_words: int
    """Expected length of the finished content, in words."""
    memory_mb: int
    """Memory the job needs, in MiB."""
    duration_ms: int
    """Expected processing time, in milliseconds (all validation retries included)."""
    attempts: int = 1
    """Generation attempts budgeted (1 + validation retries)."""


class GranulatorValidationConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The validation loop's configuration (seed 002, phase 6)."""

    enabled: bool = False
    """Whether the structure is validated at all."""
    level: int = 1
    """1 to 3: how many questions are asked (more at higher levels)."""
    threshold: float = 80.0
    """Minimum accuracy percentage for the structure to pass."""
    max_retries: int = 2
    """How many times a structure below the threshold is regenerated with another strategy."""


class GranulatorValidationResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of validating one generated structure."""

    accuracy_percentage: float
    """How well the structure answers the questions, 0 to 100."""
    questions_asked: list[str]
    """The questions derived from the request."""
    passed: bool
    """``accuracy_percentage`` reached the threshold."""
    ai_feedback: str = ""
    """What the structure covers and misses, in words (seed 002's name). Empty in results
    recorded before it existed: read ``feedback`` there."""
    feedback: str = ""
    """Deprecated: the same text as ``ai_feedback``, kept for readers of earlier results."""
    attempt: int = 1
    """1 for the first generation, 2 for the first retry, …"""
    strategy: str = ""
    """The generation strategy that produced the structure."""
    validator: str = ""
    """The validator that scored it (``builtin`` or ``http``); empty in earlier results."""


@event_type("nexus.granulator.handshake.accepted")
class GranulatorHandshakeAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """A replica accepted a handshake and reserved one unit of its capacity for it."""

    handshake_id: str
    execution_id: str
    worker_id: str
    """The calling worker (``X-Worker-ID``)."""
    replica_id: str
    """The replica whose capacity the handshake holds."""
    stage: str
    input: dict[str, Any]
    """The validated input (topic, structure_type, depth, sources, …)."""
    requirements: GranulatorRequirements
    estimate: GranulatorEstimate
    validation: GranulatorValidationConfig
    lease_ms: int
    """Capacity is released after this long even without an acknowledgement."""


@event_type("nexus.granulator.handshake.rejected")
class GranulatorHandshakeRejected(msgspec.Struct, frozen=True, kw_only=True):
    """A replica refused a handshake; nothing was reserved."""

    handshake_id: str
    execution_id: str
    worker_id: str
    replica_id: str
    code: str
    """``over_capacity``, ``requirement_out_of_bounds``, ``unknown_structure_type``, ``unknown_stage``,
    ``invalid_input``."""
    reason: str
    """The reason in words, naming the field at fault."""


@event_type("nexus.granulator.granulation.progressed")
class GranulatorProgressed(msgspec.Struct, frozen=True, kw_only=True):
    """A step of processing: input resolved, an attempt generated, output stored."""

    handshake_id: str
    execution_id: str
    replica_id: str
    step: str
    """``started``, ``generated``, ``stored``."""
    percent: int
    """Rough completion, 0 to 100."""
    message: str = ""


@event_type("nexus.granulator.validation.completed")
class GranulatorValidated(msgspec.Struct, frozen=True, kw_only=True):
    """One validation of a generated structure; a retry follows when it did not pass."""

    handshake_id: str
    execution_id: str
    result: GranulatorValidationResult


@event_type("nexus.granulator.granulation.completed")
class GranulatorCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """The structure was generated; it is inline when small and in Raw otherwise."""

    handshake_id: str
    execution_id: str
    replica_id: str
    output: dict[str, Any] | None = None
    """The structure itself when its JSON is under the inline limit."""
    output_ref: str | None = None
    """``raw://…`` reference of the structure's JSON otherwise."""
    size_bytes: int
    """Size of the structure's JSON encoding."""
    sha256: str
    """sha256 of the structure's JSON encoding, hex."""
    title: str
    sections: int
    estimated_words: int
    attempts: int
    """Generation attempts made (1 + validation retries)."""
    generator: str
    validation: GranulatorValidationResult | None = None
    """The last validation, when validation was enabled."""
    duration_ms: float


@event_type("nexus.granulator.granulation.failed")
class GranulatorFailed(msgspec.Struct, frozen=True, kw_only=True):
    """Processing failed; a retryable failure may be processed again, a permanent one may not."""

    handshake_id: str
    execution_id: str
    replica_id: str
    code: str
    """``generator_unavailable``, ``generator_output_invalid``, ``input_unavailable``, ``invalid_input``."""
    message: str
    retryable: bool


@event_type("nexus.granulator.handshake.acknowledged")
class GranulatorAcknowledged(msgspec.Struct, frozen=True, kw_only=True):
    """The caller acknowledged the result; the handshake is closed and its capacity released."""

    handshake_id: str
    execution_id: str
    worker_id: str
    status: str
    """The status the caller reports (``completed``, ``failed``, ``cancelled``)."""
    output_ref: str | None = None


@event_type("nexus.granulator.handshake.expired")
class GranulatorExpired(msgspec.Struct, frozen=True, kw_only=True):
    """The lease of an unacknowledged handshake ran out; its capacity was released."""

    handshake_id: str
    execution_id: str
    replica_id: str
