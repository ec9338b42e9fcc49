"""The Nexus event catalogue: the CloudEvents envelope, event data Structs, subject naming.

Every event type that crosses a service boundary is declared here once, as a frozen msgspec
Struct registered under its CloudEvents ``type``. Services import these declarations; they never
import each other.
"""

# Importing the event modules registers their types in CATALOG.
from nexus.proto import events as events
from nexus.proto._catalog import CATALOG, EventCatalog, event_type, type_of
from nexus.proto._envelope import (
    PLATFORM_TENANT,
    SPECVERSION,
    CloudEvent,
    EnvelopeError,
    canonical_bytes,
    check_formats,
    decode_event,
    decode_events,
    encode_event,
    new_event,
    now_rfc3339,
    parse_rfc3339,
)
from nexus.proto._ids import RandomPool, new_event_id
from nexus.proto._subjects import (
    CMD_PREFIX,
    DLQ_PREFIX,
    EVT_PREFIX,
    EXT_PREFIX,
    STREAM_CMD,
    STREAM_DLQ,
    STREAM_EVT,
    STREAM_EXT,
    cmd_subject,
    dlq_subject,
    evt_subject,
    ext_stream_id,
    subject_for,
)

__all__ = [
    "CATALOG",
    "CMD_PREFIX",
    "DLQ_PREFIX",
    "EVT_PREFIX",
    "EXT_PREFIX",
    "PLATFORM_TENANT",
    "SPECVERSION",
    "STREAM_CMD",
    "STREAM_DLQ",
    "STREAM_EVT",
    "STREAM_EXT",
    "CloudEvent",
    "EnvelopeError",
    "EventCatalog",
    "RandomPool",
    "canonical_bytes",
    "check_formats",
    "cmd_subject",
    "decode_event",
    "decode_events",
    "dlq_subject",
    "encode_event",
    "event_type",
    "events",
    "evt_subject",
    "ext_stream_id",
    "new_event",
    "new_event_id",
    "now_rfc3339",
    "parse_rfc3339",
    "subject_for",
    "type_of",
]
