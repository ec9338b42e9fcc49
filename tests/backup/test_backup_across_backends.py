"""``nexus backup`` from one backend and ``restore`` onto another (SQLite and file Raw → PostgreSQL
and back): the same ``nexus log verify`` result, the same ``nexus replay --verify`` digests, the
same events at the same positions with the same hashes, and a second backup equal to the first
(the same manifest root).

The events come from a run of the services (``tests.replay.test_replay_services.run_a_platform``:
keys, a workflow, executions, a trigger, a job, a granulator handshake), then a seal over the
log; Raw holds a projection's live checkpoint, a blob larger than one PostgreSQL chunk and a
small one. The commands run as processes, as an operator runs them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.eventlog import EventLog, open_event_log
from nexus.proof import Manifest
from nexus.raw import open_raw
from nexus.raw.postgres import CHUNK_BYTES
from nexus.replay import CheckpointStore, ProjectionRunner, StreamCatalog, follow
from tests.replay.test_replay_services import run_a_platform

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
BIG = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 7)
"""Two chunks and a bit in PostgreSQL: the chunked path crosses the round trip."""


def nexus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A ``nexus`` command as a process, against the platform ``env`` names."""
    full = {key: value for key, value in os.environ.items() if not key.startswith("NEXUS_")}
    full |= {"PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "nexus.cli.main", *args], env=full, capture_output=True, text=True, timeout=300
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def digests(replay_output: str) -> dict[str, str]:
    """Each projection's verdict and digest from ``nexus replay --verify`` (rates vary; these must not)."""
    found = {}
    for line in replay_output.splitlines():
        if line.startswith(("OK ", "MISMATCH ")):
            verdict, name = line.split()[:2]
            found[name.rstrip(":")] = f"{verdict} {line.split('digest ')[1].split(';')[0]}"
    return found


async def placed(log: EventLog) -> list[tuple[int | None, str, str | None, int | None, str | None]]:
    return [(e.position, e.id, e.streamid, e.streamversion, e.hash) for e in await log.read_all()]


async def test_backup_restore_sqlite_to_postgres_and_back(tmp_path: Path, postgres_database: str) -> None:
    sqlite_env = {"NEXUS_DATA_DIR": str(tmp_path / "sqlite")}
    postgres_env = {
        "NEXUS_DATA_DIR": str(tmp_path / "pg-data"),
        "NEXUS_EVENT_LOG_URL": postgres_database,
        "NEXUS_RAW_URL": postgres_database,
    }
    back_env = {"NEXUS_DATA_DIR": str(tmp_path / "sqlite-again")}
    # A run of the services on SQLite and file Raw, a projection's live checkpoint, two blobs.
    data = tmp_path / "sqlite"
    data.mkdir()
    log = await open_event_log(f"sqlite:///{data / 'events.db'}")
    try:
        await run_a_platform(log, tmp_path / "services")
    finally:
        await log.close()  # the services close it when they stop; closing twice is harmless
    log = await open_event_log(f"sqlite:///{data / 'events.db'}")
    raw = await open_raw(f"file://{data / 'raw'}")
    try:
        head = await log.head()
        stop = asyncio.Event()
        caught_up = lambda r: r.position >= head and stop.set()  # noqa: E731
        store = CheckpointStore(raw, StreamCatalog.name)
        runner = ProjectionRunner(StreamCatalog())
        await asyncio.wait_for(follow(log, runner, checkpoints=store, stop=stop, on_applied=caught_up), 60)
        await raw.store("t/acme/reports/big.bin", BIG, "application/octet-stream")
        await raw.store("t/acme/reports/small.json", b'{"ok": true}', "application/json")
        original = await placed(log)
    finally:
        await log.close()
        await raw.close()
    assert head >= 30, "the run produced too few events to be a test"
    ok(nexus(sqlite_env, "log", "seal"))
    verified = ok(nexus(sqlite_env, "log", "verify"))
    assert verified.startswith("OK: positions 1..") and "1 seal(s) checked" in verified
    replayed = digests(ok(nexus(sqlite_env, "replay", "--verify")))
    assert "workflow.executions" in replayed and StreamCatalog.name in replayed
    assert all(value.startswith("OK ") for value in replayed.values()), replayed

    # SQLite → PostgreSQL.
    first = tmp_path / "backup-from-sqlite"
    ok(nexus(sqlite_env, "backup", "create", str(first)))
    restored = ok(nexus(postgres_env, "backup", "restore", str(first)))
    assert f"restored {head + 1} events and 3 blobs" in restored
    assert ok(nexus(postgres_env, "log", "verify")) == verified
    assert digests(ok(nexus(postgres_env, "replay", "--verify"))) == replayed
    pg_log = await open_event_log(postgres_database)
    pg_raw = await open_raw(postgres_database)
    try:
        assert (await placed(pg_log))[:head] == original
        assert await pg_raw.retrieve("t/acme/reports/big.bin") == BIG
        assert (await pg_raw.stat("t/acme/reports/small.json")).content_type == "application/json"
    finally:
        await pg_log.close()
        await pg_raw.close()
    # A restore onto the PostgreSQL log that now holds the events is refused, and changes nothing.
    refused = nexus(postgres_env, "backup", "restore", str(first))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    assert ok(nexus(postgres_env, "log", "verify")) == verified

    # PostgreSQL → SQLite: the backup is the same backup, file for file.
    second = tmp_path / "backup-from-postgres"
    ok(nexus(postgres_env, "backup", "create", str(second)))
    assert Manifest.from_json((second / "manifest.json").read_bytes()).root == (
        Manifest.from_json((first / "manifest.json").read_bytes()).root
    )
    ok(nexus(back_env, "backup", "restore", str(second)))
    assert ok(nexus(back_env, "log", "verify")) == verified
    assert digests(ok(nexus(back_env, "replay", "--verify"))) == replayed
