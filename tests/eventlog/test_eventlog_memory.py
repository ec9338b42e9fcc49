"""The contract on the in-memory adapter, which defines the semantics."""

from __future__ import annotations

from pathlib import Path

from nexus.eventlog import EventLog, open_event_log
from nexus.eventlog.memory import MemoryEventLog
from nexus.testing import EventLogContract


class TestMemoryEventLog(EventLogContract):
    async def make_log(self, tmp_path: Path) -> EventLog:
        log = await open_event_log("memory://")
        assert isinstance(log, MemoryEventLog)
        return log
