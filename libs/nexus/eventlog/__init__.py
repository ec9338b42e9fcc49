"""The event log: one append-only record of every state change.

Open one by URL at the composition root::

    log = await open_event_log("sqlite:///var/nexus/events.db")

Adapters: ``memory://`` (tests), ``sqlite:///PATH`` (embedded default), ``mongodb://…``
(production; PyMongo's asyncio API). All pass the same contract suite.
"""

from __future__ import annotations

from nexus.eventlog._errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventLogArgumentError,
    EventLogClosedError,
    EventLogError,
    EventLogUnavailableError,
)
from nexus.eventlog._port import ANY, GENESIS_HASH, NO_STREAM, STREAM_EXISTS, EventLog
from nexus.eventlog.chain import event_hash

__all__ = [
    "ANY",
    "GENESIS_HASH",
    "NO_STREAM",
    "STREAM_EXISTS",
    "ConcurrencyError",
    "DuplicateEventError",
    "EventLog",
    "EventLogArgumentError",
    "EventLogClosedError",
    "EventLogError",
    "EventLogUnavailableError",
    "event_hash",
    "open_event_log",
]


async def open_event_log(url: str) -> EventLog:
    """Open the event log named by ``url`` (``memory://``, ``sqlite:///PATH``, ``mongodb://…``)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from nexus.eventlog.memory import MemoryEventLog

        return MemoryEventLog(url)
    if scheme == "sqlite":
        from nexus.eventlog.sqlite import SqliteEventLog

        return await SqliteEventLog.open(url)
    if scheme in ("mongodb", "mongodb+srv"):
        from nexus.eventlog.mongo import MongoEventLog

        return await MongoEventLog.open(url)
    raise EventLogArgumentError(
        f"NEXUS_EVENT_LOG_URL {url!r}: unknown scheme {scheme!r} (use memory://, sqlite:///PATH or mongodb://HOST/DB)"
    )
