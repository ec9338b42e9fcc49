"""The data directory is 0700 and the files Nexus writes in it 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.fs import make_private_dir, restrict_umask
from nexus.raw.file import FileRaw

NEXUS = [sys.executable, "-m", "nexus.cli.main"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common shell default, 022 (files 0644, directories 0755), restored afterwards."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def nexus(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NEXUS_DATA_DIR": str(data_dir),
        "NEXUS_EVENT_LOG_URL": "",
        "NEXUS_RAW_URL": "",
        "NEXUS_NATS_URL": "",
    }
    # The child inherits the test's umask 022, as from a shell; `nexus` itself must tighten it.
    return subprocess.run([*NEXUS, *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_cli_keeps_the_log_and_backups_private(tmp_path: Path, loose_umask: None) -> None:
    data = tmp_path / "data"
    # A command that creates the data directory and the SQLite log.
    done = nexus("keys", "create", "--client", "acme", data_dir=data)
    assert done.returncode == 0, done.stderr
    assert mode(data) == 0o700
    db_files = [p for p in data.iterdir() if p.name.startswith("events.db")]
    assert db_files, list(data.iterdir())
    # The database and its WAL, and the wake-up directory (events.db-wake/) with its files.
    for path in [*db_files, *(data / "events.db-wake").rglob("*")]:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), (path.name, oct(mode(path)))
    # A backup holds the same data: private as well.
    backup = tmp_path / "backup"
    done = nexus("backup", "create", str(backup), data_dir=data)
    assert done.returncode == 0, done.stderr
    assert mode(backup) == 0o700
    for path in backup.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), (path, oct(mode(path)))


async def test_raw_objects_are_private_under_a_loose_umask(tmp_path: Path, loose_umask: None) -> None:
    raw = FileRaw(tmp_path / "raw", fsync=False)
    await raw.store("t/acme/uploads/a.json", b"{}")  # small: a row of the store's database
    await raw.store("t/acme/uploads/b.bin", b"x" * (raw.inline_max + 1))  # large: a file
    assert mode(tmp_path / "raw") == 0o700
    paths = list((tmp_path / "raw").rglob("*"))
    assert {"b.bin", "inline.db", "inline.db-wal"} <= {p.name for p in paths}
    for path in paths:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), (path, oct(mode(path)))
    await raw.close()


def test_make_private_dir_creates_and_tightens(tmp_path: Path, loose_umask: None) -> None:
    # An older version's data directory, 0755: tightened.
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    assert mode(old) == 0o755
    assert make_private_dir(old) == old and mode(old) == 0o700
    # Missing parents are created 0700 too.
    new = tmp_path / "a" / "b" / "c"
    make_private_dir(new)
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a/b", new)] == [0o700] * 3
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        make_private_dir(tmp_path / "file")


def test_restrict_umask_returns_the_old_one(loose_umask: None, tmp_path: Path) -> None:
    previous = restrict_umask()
    try:
        assert previous == 0o022
        (tmp_path / "f").write_text("x")
        assert mode(tmp_path / "f") == 0o600
    finally:
        os.umask(previous)


async def test_a_sqlite_log_opened_as_a_library_is_private_and_leaves_the_users_folder_alone(
    tmp_path: Path, loose_umask: None
) -> None:
    from nexus.eventlog import open_event_log
    from nexus.proto import new_event

    users_folder = tmp_path / "work"
    users_folder.mkdir(mode=0o755)
    os.chmod(users_folder, 0o755)
    for path in (users_folder / "events.db", users_folder / "new" / "deeper" / "events.db"):
        log = await open_event_log(f"sqlite:///{path}")
        try:
            await log.append("s", [new_event("nexus.test.thing.done", {}, source="t")])
            # The database and its write-ahead log are private even under umask 022 (no
            # `nexus` entry point set a stricter one here).
            assert mode(path) == 0o600
            assert mode(path.with_name(path.name + "-wal")) == 0o600
        finally:
            await log.close()
    # A folder the user named is the user's: left 0755; folders created for the log are 0700.
    assert mode(users_folder) == 0o755
    assert mode(users_folder / "new") == 0o700 and mode(users_folder / "new" / "deeper") == 0o700
