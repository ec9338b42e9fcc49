"""The CloudEvents 1.0 envelope (structured JSON mode) with the Nexus extensions."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from nexus.proto._correlation import current_correlation_id
from nexus.proto._ids import new_event_id

SPECVERSION: Literal["1.0"] = "1.0"

PLATFORM_TENANT = "platform"
"""The tenant that owns the platform's own resources (bundled workflows and triggers, its
services' work). No client can be named so."""

# RFC 3339 date-time: full date, 'T', time with optional fraction, and a zone ('Z' or offset).
_RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"

# Format checks done in Python after decoding, not as msgspec ``pattern`` constraints: msgspec
# runs those through the ``re`` module on every decode, which tripled the cost of reading the
# log's own (already checked) events. Messages from outside go through ``decode_event``, which
# applies them.
_TIME = re.compile(_RFC3339)
_HEX = "0123456789abcdef"
_DIGEST_WORDS = "a sha256 digest (64 lower-case hex digits)"

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Version = Annotated[int, msgspec.Meta(ge=1)]


class CloudEvent(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """One event: a CloudEvents 1.0 envelope in structured JSON mode.

    The required attributes have no default; the Nexus extensions are optional and omitted
    from the JSON when unset. ``streamid``, ``streamversion``, ``position``, ``prevhash`` and
    ``hash`` are assigned by the event log when the event is appended.

    Instances are not tracked by the cyclic garbage collector (``gc=False``): an event is
    frozen and its data is a JSON value, so it cannot take part in a reference cycle, and a
    replay that decodes millions of events no longer triggers collections that walk them all.
    """

    specversion: Literal["1.0"]
    """CloudEvents specification version; always ``"1.0"``."""
    id: NonEmpty
    """Unique id of the event (UUIDv7 for events Nexus creates); with ``source`` it identifies it."""
    source: NonEmpty
    """Producer of the event, e.g. ``nexus/workflow`` or an external system's URI."""
    type: NonEmpty
    """Event type, e.g. ``nexus.workflow.execution.completed``."""
    time: str
    """When the occurrence happened, RFC 3339."""
    datacontenttype: NonEmpty
    """Media type of ``data``; Nexus writes ``application/json``."""
    data: Any
    """The event payload (any JSON value); typed by the Struct registered for ``type``."""
    subject: str | None = None
    """CloudEvents ``subject``: what the event is about within the source (optional)."""
    dataschema: str | None = None
    """URI of the schema ``data`` adheres to (optional)."""
    streamid: str | None = None
    """Stream (aggregate) the event belongs to, e.g. ``execution-0192…``."""
    streamversion: Version | None = None
    """1-based version of the event within its stream."""
    position: Version | None = None
    """Global, strictly increasing position in the log."""
    correlationid: str | None = None
    """Id shared by every event of one logical operation."""
    causationid: str | None = None
    """Id of the event or command that caused this one."""
    traceparent: str | None = None
    """W3C trace context of the operation that produced the event."""
    prevhash: str | None = None
    """``hash`` of the previous event of the same stream (64 zeros for the first)."""
    hash: str | None = None
    """sha256 of this event's canonical encoding (``hash`` itself left out), hex."""
    extevent: str | None = None
    """For events ingested from ``nexus.ext.<source>.<event>``: the ``<event>`` token, so the
    relay republishes them on ``nexus.evt.ext.<source>.<event>``."""
    tenant: str | None = None
    """The client (tenant) that owns what the event is about; ``platform`` for the platform's
    own resources; unset on events about no tenant's resource (keys, seals). Every consumer
    can check ownership from the envelope alone."""


class EnvelopeError(ValueError):
    """A message is not a valid Nexus CloudEvent, or its data does not match its type's Struct.

    Attributes:
        field: JSON path of the offending attribute (``$`` for the whole message).
        reason: What is wrong with it, in words.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid event: {field}: {reason}")
        self.field = field
        self.reason = reason

    @classmethod
    def from_msgspec(cls, exc: msgspec.MsgspecError, prefix: str = "$") -> EnvelopeError:
        """Translate a msgspec error message into (field, reason)."""
        text = str(exc)
        match = re.match(r"^(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?$", text, re.S)
        reason = match.group("reason") if match else text
        path = (match.group("path") if match else None) or "$"
        missing = re.match(r"Object missing required field `([^`]+)`", reason)
        if missing:
            path = f"{path}.{missing.group(1)}"
        if reason.startswith("Invalid enum value") and path.endswith(".specversion"):
            reason += " (Nexus speaks CloudEvents specversion '1.0')"
        if prefix != "$":
            path = prefix + path[1:]
        return cls(path, reason)


def check_formats(event: CloudEvent, path: str = "$") -> CloudEvent:
    """Raise EnvelopeError unless ``time``, ``prevhash`` and ``hash`` have their formats."""
    # Consumers call this on every message, so the digests are checked without a regex.
    if not _TIME.match(event.time):
        raise EnvelopeError(f"{path}.time", f"expected a string that is an RFC 3339 date-time, got {event.time!r}")
    for name, value in (("prevhash", event.prevhash), ("hash", event.hash)):
        if value is not None and (len(value) != 64 or value.strip(_HEX)):
            raise EnvelopeError(f"{path}.{name}", f"expected a string that is {_DIGEST_WORDS}, got {value!r}")
    return event


_decoder = msgspec.json.Decoder(CloudEvent)
_batch_decoder = msgspec.json.Decoder(list[CloudEvent])
_encoder = msgspec.json.Encoder()
_canonical_encoder = msgspec.json.Encoder(order="sorted")


def decode_event(payload: bytes | str) -> CloudEvent:
    """Decode one structured-mode CloudEvent.

    Raises:
        EnvelopeError: naming the field and the reason (bad JSON, a missing or mistyped
            attribute, a ``specversion`` other than 1.0, an ill-formed ``time``).
    """
    try:
        event = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            raise EnvelopeError.from_msgspec(exc) from None
        raise EnvelopeError("$", f"not valid JSON: {exc}") from None
    return check_formats(event)


def decode_events(payload: bytes | str) -> list[CloudEvent]:
    """Decode a JSON array of CloudEvents (the CloudEvents batch format)."""
    try:
        events = _batch_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            raise EnvelopeError.from_msgspec(exc) from None
        raise EnvelopeError("$", f"not valid JSON: {exc}") from None
    for index, event in enumerate(events):
        check_formats(event, f"$[{index}]")
    return events


def encode_event(event: CloudEvent) -> bytes:
    """Encode an event as structured-mode CloudEvents JSON."""
    return _encoder.encode(event)


def canonical_bytes(event: CloudEvent) -> bytes:
    """The canonical encoding that ``hash`` covers: sorted keys, no ``hash`` attribute."""
    if event.hash is not None:
        event = msgspec.structs.replace(event, hash=None)
    return _canonical_encoder.encode(event)


def now_rfc3339() -> str:
    """The current UTC time, RFC 3339 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 instant (``2025-11-19T10:00:00.123456Z``, or with an offset) as an aware datetime.

    The one parser of the platform's timestamps (events' ``time``, deadlines, retry times). ``Z``
    and ``z`` mean UTC; a time without an offset is taken as UTC.

    Raises:
        ValueError: not an ISO 8601 / RFC 3339 date-time.
    """
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def new_event(
    type: str,
    data: Any,
    *,
    source: str,
    id: str | None = None,
    time: str | None = None,
    subject: str | None = None,
    correlationid: str | None = None,
    causationid: str | None = None,
    traceparent: str | None = None,
    tenant: str | None = None,
) -> CloudEvent:
    """Build a new event ready to append; the log assigns stream, version, position and hashes.

    ``data`` may be a msgspec Struct (it is converted to plain JSON values) or any JSON value.
    Without ``correlationid``, the event carries the current correlation id
    (``nexus.obs.correlation``), if one is set.
    """
    if correlationid is None:
        correlationid = current_correlation_id()
    if isinstance(data, msgspec.Struct):
        data = msgspec.to_builtins(data)
    return CloudEvent(
        specversion=SPECVERSION,
        id=id or new_event_id(),
        source=source,
        type=type,
        time=time or now_rfc3339(),
        datacontenttype="application/json",
        data=data,
        subject=subject,
        correlationid=correlationid,
        causationid=causationid,
        traceparent=traceparent,
        tenant=tenant,
    )
