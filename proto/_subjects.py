"""NATS subject and JetStream stream naming (see ARCHITECTURE.md, "Subjects")."""

from __future__ import annotations

import re

from nexus.proto._envelope import CloudEvent

EVT_PREFIX = "nexus.evt"
CMD_PREFIX = "nexus.cmd"
EXT_PREFIX = "nexus.ext"
DLQ_PREFIX = "nexus.dlq"

STREAM_EVT = "NEXUS_EVT"
STREAM_CMD = "NEXUS_CMD"
STREAM_EXT = "NEXUS_EXT"
STREAM_DLQ = "NEXUS_DLQ"

# A subject token: no whitespace, no '.', no wildcards.
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def _token(value: str, what: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} is not a valid subject token (letters, digits, '_' and '-')")
    return value


def evt_subject(event_type: str) -> str:
    """Subject of a platform event type: ``nexus.<svc>.<entity>.<event>`` → ``nexus.evt.<svc>.<entity>.<event>``."""
    parts = event_type.split(".")
    if len(parts) < 4 or parts[0] != "nexus":
        raise ValueError(f"event type {event_type!r} is not of the form nexus.<service>.<entity>.<event>")
    for part in parts[1:]:
        _token(part, "event type part")
    return f"{EVT_PREFIX}.{'.'.join(parts[1:])}"


def ext_stream_id(source: str) -> str:
    """Log stream of the external events ingested from ``nexus.ext.<source>.>``."""
    return f"ext-{_token(source, 'external source')}"


def subject_for(event: CloudEvent) -> str:
    """The ``nexus.evt.>`` subject the relay publishes a stored event on.

    Platform events map from their type. Events ingested from ``nexus.ext.<source>.<event>``
    (stream ``ext-<source>``) go out on ``nexus.evt.ext.<source>.<event>``; the ingest keeps
    ``<event>`` in the ``extevent`` extension (else the type's last part is used).
    """
    stream = event.streamid or ""
    if stream.startswith("ext-"):
        token = event.extevent or re.sub(r"[^A-Za-z0-9_\-]", "_", event.type.rsplit(".", 1)[-1])
        return f"{EVT_PREFIX}.ext.{stream[4:]}.{token or 'event'}"
    return evt_subject(event.type)


def cmd_subject(service: str, verb: str) -> str:
    """Command subject ``nexus.cmd.<service>.<verb>``."""
    return f"{CMD_PREFIX}.{_token(service, 'service')}.{_token(verb, 'verb')}"


def dlq_subject(consumer: str) -> str:
    """Dead-letter subject ``nexus.dlq.<consumer>``."""
    return f"{DLQ_PREFIX}.{_token(consumer, 'consumer')}"
