"""How an execution ended, as KAM records it: metrics from its stream, costs, deliverables, once.

Shared by the execution watcher (which learns of the end from the log) and the worker-session
route (an external orchestrator reporting it). ``record_outcome`` appends the ledger entries, the
deliverables and the request's ``completed`` or ``failed`` under ids derived from the execution,
in one append to the request's stream at the version the request had when the writer saw it
executing, so two replicas (or a KAM that restarted half-way) record each outcome once, and the
ledger prices exactly the outcome recorded: the second writer meets a duplicate or a
ConcurrencyError and adds nothing.
"""

from __future__ import annotations

import math
import mimetypes
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from nexus.eventlog import ConcurrencyError, DuplicateEventError
from nexus.proto import CloudEvent, new_event, parse_rfc3339
from nexus.proto.events.kam import KamCostRecorded, KamDeliverableRecorded, KamRequestCompleted, KamRequestFailed
from nexus.raw import RawKeyError, is_ref, key_tenant, ref_key
from nexus.services.kam.context import KamContext
from nexus.services.kam.costs import Usage
from nexus.services.kam.state import (
    COST_RECORDED,
    DELIVERABLE_RECORDED,
    REQUEST_COMPLETED,
    REQUEST_FAILED,
    Request,
    request_stream,
)

__all__ = [
    "CONTENT_TYPE",
    "EXECUTION_STREAM",
    "TERMINAL",
    "NewDeliverable",
    "Outcome",
    "client_key",
    "encode_output",
    "extension",
    "find_refs",
    "measure",
    "record_outcome",
    "stable_id",
    "tokens_of",
    "valid_content_type",
]

TERMINAL: Mapping[str, str] = {
    "nexus.workflow.execution.completed": "completed",
    "nexus.workflow.execution.failed": "failed",
    "nexus.workflow.execution.compensated": "failed",
    "nexus.workflow.execution.cancelled": "failed",
    "nexus.workflow.execution.timed_out": "failed",
}
"""The events that end an execution, and what they make of the request."""

STEP_COMPLETED = "nexus.workflow.step.completed"
EXECUTION_STREAM = "execution-"
"""The workflow service's stream of one execution is ``execution-<id>`` (ARCHITECTURE, Log streams)."""

_IDS = uuid.UUID("ec4acd95-fe99-4bd4-adcd-4f4ddad992ce")


def stable_id(execution_id: str, *parts: str) -> str:
    """An event id derived from the execution and what the event records: every replica (and a
    restarted KAM) writes the same id for the same fact, so the log keeps it once."""
    return str(uuid.uuid5(_IDS, "\x00".join((execution_id, *parts))))


# -- measuring an execution -------------------------------------------------------------------


def _count(value: Any) -> int | None:
    """A non-negative whole count, or None when ``value`` is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _words(value: Any) -> int:
    """Words in the text of a step's output (every string but ``raw://`` references)."""
    if isinstance(value, str):
        return 0 if is_ref(value) else len(value.split())
    if isinstance(value, Mapping):
        return sum(_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    return 0


def tokens_of(output: Any) -> tuple[int, bool]:
    """The tokens one step used, and whether the number is an estimate.

    Reported: the output's ``tokens_used``, or ``usage.total_tokens`` (OpenAI's shape). Else
    estimated as words × 4/3 (about 0.75 words per token in English), from ``word_count`` when
    the step gives it, else from the words of its text.
    """
    if isinstance(output, Mapping):
        reported = _count(output.get("tokens_used"))
        if reported is not None:
            return reported, False
        usage = output.get("usage")
        if isinstance(usage, Mapping):
            reported = _count(usage.get("total_tokens"))
            if reported is not None:
                return reported, False
        words = _count(output.get("word_count"))
        if words is None:
            words = _words(output)
    else:
        words = _words(output)
    return (math.ceil(words * 4 / 3), True) if words else (0, False)


def measure(events: Sequence[CloudEvent], end: CloudEvent) -> tuple[Usage, dict[str, Any]]:
    """The metrics of an execution from its own stream: time from its first event (queued) to
    ``end``, the steps completed (compensations not counted), the tokens their outputs used."""
    outputs: dict[str, Any] = {}
    for event in events:
        data = event.data if isinstance(event.data, Mapping) else {}
        if event.type == STEP_COMPLETED and not data.get("compensation"):
            outputs[str(data.get("step_id"))] = data.get("output")
    tokens, estimated = 0, False
    for output in outputs.values():
        used, guessed = tokens_of(output)
        tokens += used
        estimated = estimated or guessed
    elapsed = 0
    if events and events[0].time and end.time:
        elapsed = max(0, round((parse_rfc3339(end.time) - parse_rfc3339(events[0].time)).total_seconds() * 1000))
    metrics: dict[str, Any] = {
        "total_time_ms": elapsed,
        "stages_completed": len(outputs),
        "tokens_used": tokens,
    }
    if estimated:
        metrics["tokens_estimated"] = True
    return Usage(stages=len(outputs), tokens=tokens), metrics


# -- recording an outcome ---------------------------------------------------------------------


@dataclass
class NewDeliverable:
    """A deliverable about to be recorded."""

    deliverable_id: str
    type: str
    storage_ref: str
    size_bytes: int
    content_type: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """How an execution ended, as KAM records it (from its events or from an orchestrator)."""

    execution_id: str
    status: str
    """``completed`` or ``failed``."""
    event_id: str
    """The id of the request's ``completed``/``failed`` event (derived, so it is written once)."""
    metrics: dict[str, Any]
    costs: list[tuple[str, float, float]]
    currency: str
    at: str
    """RFC 3339: when the execution ended (the ledger entries' time)."""
    error: str = ""
    deliverables: list[NewDeliverable] = field(default_factory=list)


async def record_outcome(ctx: KamContext, request: Request, outcome: Outcome, version: int) -> bool:
    """Append the ledger entries, the deliverables and the request's transition, exactly once.

    All of them in one atomic append to the request's stream, at ``version``: the request's
    version when the caller saw it executing, taken before anything was awaited (the fold's
    ``request`` object moves on while the caller reads the execution or stores its output). A
    writer that lost the race gets ConcurrencyError (or a duplicate) and the answer False,
    having added nothing, so the ledger always prices the outcome that was recorded and never
    a losing one.
    """
    client = request.client_id
    template_id = request.template_id
    eid = outcome.execution_id
    source = ctx.source
    ledger = [
        new_event(
            COST_RECORDED,
            KamCostRecorded(
                entry_id=stable_id(eid, "cost", kind),
                client_id=client,
                amount=amount,
                currency=outcome.currency,
                kind=kind,
                quantity=quantity,
                request_id=request.request_id,
                execution_id=eid,
                template_id=template_id,
                at=outcome.at,
            ),
            source=source,
            id=stable_id(eid, "cost", kind),
            subject=request.request_id,
            correlationid=request.request_id,
            tenant=client,
        )
        for kind, quantity, amount in outcome.costs
    ]
    deliverables = [
        new_event(
            DELIVERABLE_RECORDED,
            KamDeliverableRecorded(
                deliverable_id=item.deliverable_id,
                request_id=request.request_id,
                client_id=client,
                execution_id=eid,
                type=item.type,
                storage_ref=item.storage_ref,
                size_bytes=item.size_bytes,
                content_type=item.content_type,
                metadata=item.metadata,
            ),
            source=source,
            id=item.deliverable_id,
            subject=request.request_id,
            correlationid=request.request_id,
            tenant=client,
        )
        for item in outcome.deliverables
    ]
    events = [*ledger, *deliverables]
    final: Any
    if outcome.status == "completed":
        final = KamRequestCompleted(
            request_id=request.request_id,
            execution_id=eid,
            metrics=outcome.metrics,
            deliverable_ids=[item.deliverable_id for item in outcome.deliverables],
        )
    else:
        final = KamRequestFailed(
            request_id=request.request_id, execution_id=eid, error=outcome.error, metrics=outcome.metrics
        )
    events.append(
        new_event(
            REQUEST_COMPLETED if outcome.status == "completed" else REQUEST_FAILED,
            final,
            source=source,
            id=outcome.event_id,
            subject=request.request_id,
            correlationid=request.request_id,
            tenant=client,
        )
    )
    try:
        await ctx.append(request_stream(request.request_id), events, expected_version=version)
    except (ConcurrencyError, DuplicateEventError):
        return False
    return True


def find_refs(value: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """Every ``raw://`` reference in an output, with the path it was found at."""
    if is_ref(value):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from find_refs(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from find_refs(item, f"{path}[{index}]")


_EXTENSIONS = {"application/json": ".json", "text/markdown": ".md", "text/plain": ".txt", "text/html": ".html"}


def _is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


CONTENT_TYPE = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+( *;[ -~]*)?$"
"""A media type with optional parameters, printable ASCII only (it becomes a response header)."""
_CONTENT_TYPE = re.compile(CONTENT_TYPE)


def valid_content_type(content_type: str) -> bool:
    """Whether ``content_type`` may be served as a ``Content-Type`` header."""
    return len(content_type) <= 255 and _CONTENT_TYPE.match(content_type) is not None


def encode_output(output: Any, content_type: str) -> tuple[bytes, str]:
    """The deliverable's bytes and content type: JSON for a JSON type; for a text type, the output
    when it is a string, or its ``text`` / ``content`` / ``markdown``; JSON otherwise (also for a
    content type that could not be a header)."""
    if not valid_content_type(content_type):
        content_type = "application/json"
    if not _is_json(content_type):
        text = output if isinstance(output, str) else None
        if text is None and isinstance(output, Mapping):
            text = next((output[k] for k in ("text", "content", "markdown") if isinstance(output.get(k), str)), None)
        if text is not None:
            return text.encode(), content_type
        content_type = "application/json"
    return msgspec.json.encode(output), content_type


def extension(content_type: str) -> str:
    base = content_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(base) or mimetypes.guess_extension(base) or ".bin"


def client_key(ref: str, client: str) -> str:
    """The Raw key of ``ref`` when it lies in ``client``'s namespace.

    Raises:
        RawKeyError: not a reference, or one outside the client's namespace (a deliverable may
            never name another tenant's or the platform's blobs).
    """
    key = ref_key(ref, tenant=client)  # a kv:// or r2:// reference names a key in the client's namespace
    if key_tenant(key) != client:
        raise RawKeyError(f"{ref} is outside client {client!r}'s namespace")
    return key
