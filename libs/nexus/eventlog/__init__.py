"""The event log: one append-only record of every state change.

Open one by URL at the composition root::

    log = await open_event_log("sqlite:///var/nexus/events.db")

Adapters: ``memory://`` (tests), ``sqlite:///PATH`` (embedded default), ``postgresql://…``
(several processes or machines on one log; psycopg 3), ``mongodb://…`` (PyMongo's asyncio
API). All pass the same contract suite.
"""

from __future__ import annotations

from nexus.eventlog._common import MAX_EVENT_BYTES_VARIABLE, resolve_max_event_bytes
from nexus.eventlog._errors import (
    AppendOutcomeUnknownError,
    ConcurrencyError,
    DuplicateEventError,
    EventLogArgumentError,
    EventLogClosedError,
    EventLogError,
    EventLogUnavailableError,
    EventTooLargeError,
)
from nexus.eventlog._port import ANY, DEFAULT_MAX_EVENT_BYTES, GENESIS_HASH, NO_STREAM, STREAM_EXISTS, EventLog
from nexus.eventlog.chain import event_hash

__all__ = [
    "ANY",
    "DEFAULT_MAX_EVENT_BYTES",
    "GENESIS_HASH",
    "MAX_EVENT_BYTES_VARIABLE",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendOutcomeUnknownError",
    "ConcurrencyError",
    "DuplicateEventError",
    "EventLog",
    "EventLogArgumentError",
    "EventLogClosedError",
    "EventLogError",
    "EventLogUnavailableError",
    "EventTooLargeError",
    "event_hash",
    "open_event_log",
    "resolve_max_event_bytes",
]


async def open_event_log(url: str, *, max_event_bytes: int | None = None) -> EventLog:
    """Open the event log named by ``url`` (``memory://``, ``sqlite:///PATH``, ``postgresql://…``, ``mongodb://…``).

    ``max_event_bytes`` is the largest event an append accepts (``EventTooLargeError`` above
    it); by default ``NEXUS_MAX_EVENT_BYTES`` from the environment, else 512 KiB.

    Raises:
        EventLogArgumentError: the URL, or the limit, is malformed.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from nexus.eventlog.memory import MemoryEventLog

        return MemoryEventLog(url, max_event_bytes=max_event_bytes)
    if scheme == "sqlite":
        from nexus.eventlog.sqlite import SqliteEventLog

        return await SqliteEventLog.open(url, max_event_bytes=max_event_bytes)
    if scheme in ("postgresql", "postgres"):
        from nexus.eventlog.postgres import PostgresEventLog

        return await PostgresEventLog.open(url, max_event_bytes=max_event_bytes)
    if scheme in ("mongodb", "mongodb+srv"):
        from nexus.eventlog.mongo import MongoEventLog

        return await MongoEventLog.open(url, max_event_bytes=max_event_bytes)
    raise EventLogArgumentError(
        f"NEXUS_EVENT_LOG_URL: unknown scheme {scheme!r} (use memory://, sqlite:///PATH, "
        "postgresql://USER@HOST/DB or mongodb://HOST/DB)"
    )
