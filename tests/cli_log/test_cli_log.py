"""The ``nexus log``, ``nexus replay`` and ``nexus backup`` commands against SQLite and file Raw."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.cli.main import main
from nexus.eventlog import open_event_log
from nexus.proto import new_event
from nexus.raw import open_raw
from nexus.replay import CheckpointStore, ProjectionRunner, StreamCatalog, follow


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEXUS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("NEXUS_EVENT_LOG_URL", raising=False)
    monkeypatch.delenv("NEXUS_RAW_URL", raising=False)
    return tmp_path / "data"


async def seed(data_dir: Path, count: int = 6) -> None:
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    log = await open_event_log(f"sqlite:///{data_dir / 'events.db'}")
    for i in range(count):
        await log.append(f"order-{i % 2}", [new_event("test.order.placed", {"i": i}, source="test")])
    await log.close()
    raw = await open_raw(f"file://{data_dir / 'raw'}")
    await raw.store("reports/r.json", b'{"r": 1}', "application/json")


async def run(argv: list[str]) -> int:
    # Commands call asyncio.run themselves, so they run in a thread of their own.
    return await asyncio.to_thread(main, argv)


async def test_tail_and_stats(platform: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(platform)
    assert await run(["log", "tail", "-n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "5" and "order-0@3 test.order.placed" in lines[0]
    assert await run(["log", "tail", "--from", "6", "--json"]) == 0
    assert '"position":6' in capsys.readouterr().out
    assert await run(["log", "stats"]) == 0
    out = capsys.readouterr().out
    assert "head:    6" in out and "streams: 2" in out and "test.order.placed" in out


async def test_verify_seal_and_tamper(platform: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(platform)
    assert await run(["log", "seal"]) == 0
    assert "sealed positions 1..6" in capsys.readouterr().out
    assert await run(["log", "verify"]) == 0
    assert "OK: positions 1..7" in capsys.readouterr().out
    with sqlite3.connect(platform / "events.db") as con:
        body = bytes(con.execute("SELECT body FROM events WHERE position = 3").fetchone()[0])
        con.execute("UPDATE events SET body = ? WHERE position = 3", (body.replace(b'"i":2', b'"i":8'),))
    assert await run(["log", "verify"]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED position 3 stream order-0: content changed" in out
    # The stored hashes (which the seal covers) were left alone, so the chain check is what fails.
    assert "1 seal(s) checked" in out
    assert await run(["log", "verify", "--from", "4", "--to", "6"]) == 0


async def test_replay_and_verify_against_the_live_checkpoint(
    platform: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(platform, 20)
    # A running service projects live and leaves its checkpoint in Raw.
    log = await open_event_log(f"sqlite:///{platform / 'events.db'}")
    raw = await open_raw(f"file://{platform / 'raw'}")
    runner = ProjectionRunner(StreamCatalog())
    stop = asyncio.Event()
    store = CheckpointStore(raw, StreamCatalog.name)
    caught_up = lambda r: r.position >= 20 and stop.set()  # noqa: E731
    await asyncio.wait_for(follow(log, runner, checkpoints=store, stop=stop, on_applied=caught_up), 30)
    await log.append("order-9", [new_event("test.order.placed", {"i": 99}, source="test")])  # after the checkpoint
    await log.close()
    assert await run(["replay", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "OK nexus.streams: rebuilt 20 events to position 20" in out and "live checkpoint at position 20" in out
    assert await run(["replay", "--verify", "-p", "nexus.streams", "--expect-digest", "0" * 64, "--at", "20"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert await run(["replay"]) == 0
    out = capsys.readouterr().out
    assert "nexus.streams: 1 events from checkpoint 20 to 21" in out
    assert await run(["replay", "-p", "no.such"]) == 2


async def test_backup_create_and_restore(platform: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(platform)
    backup = tmp_path / "backup"
    assert await run(["backup", "create", str(backup)]) == 0
    assert "6 events, 1 blobs" in capsys.readouterr().out
    # Restoring over the live data is refused with a clear message.
    assert await run(["backup", "restore", str(backup)]) == 1
    assert "not empty" in capsys.readouterr().err
    os.environ["NEXUS_DATA_DIR"] = str(tmp_path / "fresh")
    assert await run(["backup", "restore", str(backup)]) == 0
    assert "restored 6 events and 1 blobs" in capsys.readouterr().out
    assert await run(["log", "verify"]) == 0
    (backup / "events.jsonl").write_text("")
    os.environ["NEXUS_DATA_DIR"] = str(tmp_path / "fresh2")
    assert await run(["backup", "restore", str(backup)]) == 1
    assert "changed: events.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "fresh2" / "raw").exists()


def test_subprocess_log_verify(tmp_path: Path) -> None:
    asyncio.run(seed(tmp_path / "data", 3))
    env = {**os.environ, "NEXUS_DATA_DIR": str(tmp_path / "data")}
    env.pop("NEXUS_EVENT_LOG_URL", None)
    env.pop("NEXUS_RAW_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "nexus.cli.main", "log", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "OK: positions 1..3, 3 events, 2 streams" in done.stdout
