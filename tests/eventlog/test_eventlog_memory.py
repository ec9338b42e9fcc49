"""The contract on the in-memory adapter, which defines the semantics."""

from __future__ import annotations

from pathlib import Path
from typing import SupportsIndex, overload

import pytest

from nexus.eventlog import EventLog, open_event_log
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import CloudEvent
from nexus.testing import EventLogContract


class _SlicesRecorded(list[CloudEvent]):
    """The memory log's event list, recording where each slice a subscription reads starts."""

    def __init__(self, events: list[CloudEvent], starts: list[int]) -> None:
        super().__init__(events)
        self.starts = starts

    @overload
    def __getitem__(self, index: SupportsIndex) -> CloudEvent: ...
    @overload
    def __getitem__(self, index: slice) -> list[CloudEvent]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> CloudEvent | list[CloudEvent]:
        if isinstance(index, slice):
            self.starts.append((index.start or 0) + 1)
        return super().__getitem__(index)


class TestMemoryEventLog(EventLogContract):
    async def make_log(self, tmp_path: Path) -> EventLog:
        log = await open_event_log("memory://")
        assert isinstance(log, MemoryEventLog)
        return log

    def record_subscription_reads(self, log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int] | None:
        assert isinstance(log, MemoryEventLog)
        starts: list[int] = []
        monkeypatch.setattr(log, "_events", _SlicesRecorded(log._events, starts))
        return starts
