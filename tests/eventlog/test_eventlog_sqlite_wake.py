"""A subscriber of a SQLite log wakes on another writer's commit without polling for it.

Two instances opened on one file stand for two processes (each instance has its own end of the
wake channel, as each process does). The fallback poll is made far longer than the test's
bound, so only the notification can wake the subscriber in time; where the directory cannot be
watched, the subscriber polls as before.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

import nexus.eventlog.sqlite as sqlite_module
from nexus.eventlog._watch import WakeChannel
from nexus.eventlog.sqlite import SqliteEventLog
from nexus.proto import new_event

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the wake channel uses Linux's inotify")


def _event(kind: str) -> object:
    return new_event(kind, {"at": time.monotonic()}, source="test")


async def _first(log: SqliteEventLog, kind: str, start: int) -> float:
    async for _event in log.subscribe(start, types=[kind]):
        return time.monotonic()
    raise AssertionError("the subscription ended")


async def test_another_writers_commit_wakes_a_filtered_subscriber_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_WATCHED_POLL_S", 30.0)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    follower = await SqliteEventLog.open(url)
    writer = await SqliteEventLog.open(url)
    try:
        waiting = asyncio.ensure_future(_first(follower, "nexus.test.wanted", 1))
        await asyncio.sleep(0.3)  # the subscriber has read the empty log and sleeps
        # Another writer's commits of other types wake it too (their types are not known to
        # it); it reads, finds nothing, and sleeps again.
        await writer.append("s", [_event("nexus.test.other")])  # type: ignore[list-item]
        await asyncio.sleep(0.2)
        assert not waiting.done()
        appended = time.monotonic()
        await writer.append("s", [_event("nexus.test.wanted")])  # type: ignore[list-item]
        woken = await asyncio.wait_for(waiting, 5)
        # Far within the 30 s fallback: the notification woke it.
        assert woken - appended < 1.0
    finally:
        await writer.close()
        await follower.close()
    # Each instance removed its own file from the channel.
    assert os.listdir(tmp_path / "log.db-wake") == []


async def test_without_a_watch_the_subscriber_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WakeChannel, "watch", lambda self, callback: False)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    follower = await SqliteEventLog.open(url)
    writer = await SqliteEventLog.open(url)
    try:
        waiting = asyncio.ensure_future(_first(follower, "nexus.test.wanted", 1))
        await asyncio.sleep(0.2)
        await writer.append("s", [_event("nexus.test.wanted")])  # type: ignore[list-item]
        await asyncio.wait_for(waiting, 2)
    finally:
        await writer.close()
        await follower.close()


async def test_the_files_of_processes_that_are_gone_are_removed(tmp_path: Path) -> None:
    wake = tmp_path / "log.db-wake"
    wake.mkdir()
    # A pid that cannot be alive (beyond pid_max), and this process's own.
    (wake / "4194305.dead").write_text("")
    (wake / f"{os.getpid()}.alive").write_text("")
    log = await SqliteEventLog.open(f"sqlite:///{tmp_path / 'log.db'}")
    try:
        names = sorted(os.listdir(wake))
        assert "4194305.dead" not in names
        assert f"{os.getpid()}.alive" in names
        assert (wake.stat().st_mode & 0o777) == 0o700
    finally:
        await log.close()
