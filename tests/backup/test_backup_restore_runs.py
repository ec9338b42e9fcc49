"""Restore reads the backup a slice at a time and cuts a stream's long run into several appends,
with the same positions and hashes; its progress counts toward the backup's total; a store that
cannot be reached is one line from ``nexus backup``, not a traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nexus.backup import _backup, create_backup, restore_backup
from nexus.cli.main import main
from nexus.eventlog import EventLog
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import new_event
from nexus.raw import open_raw


class CountingLog(MemoryEventLog):
    """Records the size of each append."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    async def append(self, stream_id: str, events, expected_version: int = -2):  # type: ignore[no-untyped-def,override]
        self.sizes.append(len(events))
        return await super().append(stream_id, events, expected_version)


async def placed(log: EventLog) -> list[tuple[int | None, str, str | None]]:
    return [(e.position, e.id, e.hash) for e in await log.read_all()]


async def test_long_runs_are_cut_and_restored_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = MemoryEventLog()
    # One stream's run of 10 events (from 10 appends), then another stream, then the first again.
    for i in range(10):
        await log.append("long", [new_event("test.e", {"i": i}, source="test")])
    await log.append("other", [new_event("test.e", {"i": 10}, source="test")])
    await log.append("long", [new_event("test.e", {"i": 11}, source="test")] * 1)
    await create_backup(log, await open_raw("memory://"), tmp_path / "b")
    monkeypatch.setattr(_backup, "_RUN_EVENTS", 4)
    monkeypatch.setattr(_backup, "_READ_LINES", 3)  # slices that end inside a run
    target = CountingLog()
    seen: list[tuple[int, int]] = []
    summary = await restore_backup(
        tmp_path / "b", target, await open_raw("memory://"), progress=lambda d, t: seen.append((d, t))
    )
    assert summary.events == 12
    assert target.sizes == [4, 4, 2, 1, 1]
    assert await placed(target) == await placed(log)
    assert seen == [(4, 12), (8, 12), (10, 12), (11, 12), (12, 12)]


async def test_a_run_is_cut_by_bytes_as_well(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = MemoryEventLog()
    for i in range(6):
        await log.append("s", [new_event("test.e", {"text": "x" * 1000, "i": i}, source="test")])
    await create_backup(log, await open_raw("memory://"), tmp_path / "b")
    line = len((tmp_path / "b/events.jsonl").read_bytes().splitlines(keepends=True)[0])
    monkeypatch.setattr(_backup, "_RUN_BYTES", 2 * line + 10)  # two events' lines, not three
    target = CountingLog()
    await restore_backup(tmp_path / "b", target, await open_raw("memory://"))
    assert target.sizes == [2, 2, 2] and await placed(target) == await placed(log)


async def test_an_unreachable_store_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = MemoryEventLog()
    await log.append("s", [new_event("test.e", {}, source="test")])
    await create_backup(log, await open_raw("memory://"), tmp_path / "b")
    monkeypatch.setenv("NEXUS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NEXUS_EVENT_LOG_URL", "postgresql://nexus:secret-pw@127.0.0.1:1/nexus?connect_timeout=2")
    monkeypatch.delenv("NEXUS_RAW_URL", raising=False)
    assert await asyncio.to_thread(main, ["backup", "restore", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nexus backup: cannot open the PostgreSQL event log") and "Traceback" not in err
    assert "secret-pw" not in err
