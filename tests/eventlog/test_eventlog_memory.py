"""The contract on the in-memory adapter, which defines the semantics."""

from __future__ import annotations

from pathlib import Path

from eventlog_contract import EventLogContract

from nexus.eventlog import EventLog, open_event_log
from nexus.eventlog.memory import MemoryEventLog


class TestMemoryEventLog(EventLogContract):
    async def make_log(self, tmp_path: Path) -> EventLog:
        log = await open_event_log("memory://")
        assert isinstance(log, MemoryEventLog)
        return log
