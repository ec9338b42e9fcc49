"""The granulator's messages: requests, the content structure it produces, and its errors.

Requests are decoded with msgspec into frozen Structs; a request that does not fit names the
field at fault (``$.input.topic: expected str``). Errors carry a stable ``code``, whether the
caller may retry, and the HTTP status the API answers with.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from nexus.proto.commands import (
    GranulatorAcknowledgeRequest,
    GranulatorExpandRequest,
    GranulatorExpandResult,
    GranulatorHandshakeRequest,
    GranulatorProcessRequest,
)
from nexus.proto.events.granulator import (
    GranulatorEstimate,
    GranulatorRequirements,
    GranulatorValidationConfig,
    GranulatorValidationResult,
)

__all__ = [
    "DEPTHS",
    "STAGES",
    "STRUCTURE_TYPES",
    "AcknowledgeRequest",
    "Estimate",
    "ExpandRequest",
    "ExpandResult",
    "GeneratorOutputError",
    "GeneratorUnavailableError",
    "GranulationInput",
    "GranulatorError",
    "HandshakeConflictError",
    "HandshakeRequest",
    "InputUnavailableError",
    "InvalidRequestError",
    "JobTimeoutError",
    "ProcessRequest",
    "Requirements",
    "Section",
    "StorageUnavailableError",
    "Structure",
    "Subsection",
    "UnknownHandshakeError",
    "UnknownReferenceError",
    "ValidationConfig",
    "ValidationResult",
    "WorkerMismatchError",
    "decode_request",
    "depth_name",
    "normalise_input",
]

Requirements = GranulatorRequirements
Estimate = GranulatorEstimate
ValidationConfig = GranulatorValidationConfig
ValidationResult = GranulatorValidationResult

STRUCTURE_TYPES = ("research_report", "course", "book", "article")
"""The structure types every generator supports."""

STAGES = ("content_granulation", "granulation")
"""Stage names a handshake may ask for (seed 002 calls it ``content_granulation``)."""

DEPTHS = {"brief": 1, "standard": 2, "detailed": 3, "comprehensive": 4}
"""Named depths and their numeric level; ``depth`` may be given as either."""


class GranulatorError(Exception):
    """Base of the granulator's errors.

    Attributes:
        code: Stable machine-readable code.
        retryable: Whether the same request may succeed later.
        status: HTTP status the API answers with.
    """

    code = "granulator_error"
    retryable = False
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class InvalidRequestError(GranulatorError):
    """The request is malformed: not JSON, a missing field, a value of the wrong type."""

    code = "invalid_request"
    status = 400


class UnknownHandshakeError(GranulatorError):
    """No handshake with this id exists (for this execution)."""

    code = "unknown_handshake"
    status = 404


class WorkerMismatchError(GranulatorError):
    """``X-Worker-ID`` names another worker than the one the token was issued to."""

    code = "worker_mismatch"
    status = 403


class UnknownReferenceError(GranulatorError):
    """``data_ref`` names a Raw reference outside the caller's tenant: answered as if it did not exist."""

    code = "unknown_reference"
    status = 404


class HandshakeConflictError(GranulatorError):
    """The handshake is in a state that does not allow the call (rejected, acknowledged, busy)."""

    code = "handshake_conflict"
    status = 409

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class InputUnavailableError(GranulatorError):
    """``data_ref`` names a blob that cannot be read or is not a JSON object."""

    code = "input_unavailable"
    status = 422


class StorageUnavailableError(GranulatorError):
    """Raw could not store the output or read the input; retrying may succeed."""

    code = "storage_unavailable"
    retryable = True
    status = 503


class JobTimeoutError(GranulatorError):
    """The job took longer than the handshake's ``timeout_ms``; retrying may succeed."""

    code = "timeout"
    retryable = True
    status = 504


class GeneratorUnavailableError(GranulatorError):
    """The generator failed (endpoint down, timeout, 5xx, rate limit); retrying may succeed."""

    code = "generator_unavailable"
    retryable = True
    status = 503


class GeneratorOutputError(GranulatorError):
    """The generator answered with something that is not a valid structure; retrying will not help."""

    code = "generator_output_invalid"
    status = 502


Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Sources = Annotated[int, msgspec.Meta(ge=0, le=200)]


class GranulationInput(msgspec.Struct, frozen=True, kw_only=True):
    """What to structure (the handshake's ``input``)."""

    topic: Topic
    """What the content is about, e.g. ``AI Tools Market Analysis``."""
    structure_type: str
    """``research_report``, ``course``, ``book`` or ``article``."""
    depth: str | int = "standard"
    """``brief``, ``standard``, ``detailed``, ``comprehensive`` (or 1 to 4)."""
    sources: Sources = 5
    """How many sources the content should draw on; spread over the sections."""
    audience: str = ""
    """Who the content is for (used in titles and learning objectives)."""


# The request and answer bodies are declared once, in the command catalogue (they travel over
# HTTP and NATS alike): these are their names here.
HandshakeRequest = GranulatorHandshakeRequest
ProcessRequest = GranulatorProcessRequest
AcknowledgeRequest = GranulatorAcknowledgeRequest
ExpandRequest = GranulatorExpandRequest
ExpandResult = GranulatorExpandResult


class Subsection(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    title: Annotated[str, msgspec.Meta(min_length=1)]
    points: list[str] = []
    """Talking points, from ``detailed`` depth on."""


class Section(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    title: Annotated[str, msgspec.Meta(min_length=1)]
    subsections: list[Subsection]
    key_questions: list[str]
    """Questions the section answers."""
    suggested_sources: Annotated[int, msgspec.Meta(ge=0)]
    estimated_words: Annotated[int, msgspec.Meta(ge=0)]
    summary: str = ""
    part: str = "body"
    """``front`` (introduction, summary, overview), ``body`` or ``back`` (conclusion, appendices)."""


class Structure(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A content structure: the granulator's output."""

    title: Annotated[str, msgspec.Meta(min_length=1)]
    structure_type: str
    topic: str
    sections: Annotated[list[Section], msgspec.Meta(min_length=1)]
    suggested_sources: Annotated[int, msgspec.Meta(ge=0)]
    estimated_words: Annotated[int, msgspec.Meta(ge=0)]
    depth: str = "standard"
    audience: str = ""
    generator: str = ""
    strategy: str = ""


def depth_name(depth: str | int) -> str:
    """The depth's name; raise InvalidRequestError for an unknown one."""
    if isinstance(depth, bool):
        raise InvalidRequestError(f"$.input.depth: expected one of {', '.join(DEPTHS)} or 1-4, got {depth!r}")
    if isinstance(depth, int):
        for name, level in DEPTHS.items():
            if level == depth:
                return name
    elif depth.strip().lower() in DEPTHS:
        return depth.strip().lower()
    raise InvalidRequestError(f"$.input.depth: expected one of {', '.join(DEPTHS)} or 1-4, got {depth!r}")


def normalise_input(inp: GranulationInput) -> GranulationInput:
    """``inp`` with a named depth and a stripped topic; raise InvalidRequestError for a bad depth or topic."""
    if not inp.topic.strip():
        raise InvalidRequestError("$.input.topic: must contain more than whitespace")
    return msgspec.structs.replace(inp, depth=depth_name(inp.depth), topic=inp.topic.strip())


def decode_request(payload: bytes | str | dict[str, Any], type_: type[Any]) -> Any:
    """Decode JSON (or an already-parsed object) into ``type_``, naming the field at fault.

    Raises:
        InvalidRequestError: the payload is not JSON or does not match ``type_``.
    """
    try:
        if isinstance(payload, dict):
            return msgspec.convert(payload, type_)
        return msgspec.json.decode(payload, type=type_)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(_describe(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"$: the body is not valid JSON ({exc})") from None


def _describe(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if " - at `" in text:
        reason, path = text.rsplit(" - at `", 1)
        return f"{path.rstrip('`')}: {reason}"
    if text.startswith("Object missing required field `"):
        name = text.split("`")[1]
        return f"$.{name}: required field is missing"
    return f"$: {text}"
