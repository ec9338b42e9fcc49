"""Backups: the log as JSON lines, the Raw blobs as files, and a manifest over both.

Layout of a backup directory::

    manifest.json        proof manifest over every other file (sha256 each, Merkle root)
    events.jsonl         every stored envelope, one per line, in position order
    raw-index.json       each blob's key and content type
    raw/<key>            each blob's bytes

``restore_backup`` verifies the manifest before it writes anything, and restores into an
empty log and Raw store only (unless forced). Events are appended stream run by stream run
with their original ids, in position order, so an empty log assigns them the same
positions and hashes again; the restore checks that it did. Nothing in a backup depends on
the backend it came from: a SQLite log and file Raw restore onto PostgreSQL (or MongoDB) and
back, and a backup taken again after the restore has the same manifest root.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import msgspec

from nexus.eventlog import EventLog
from nexus.fs import PRIVATE_FILE_MODE, make_private_dir
from nexus.proof import FileSource, Manifest, ManifestVerification, manifest_of, verify_manifest
from nexus.proto import CloudEvent, decode_event, encode_event
from nexus.raw import RawBackend, check_key

MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
RAW_INDEX = "raw-index.json"
RAW_DIR = "raw"
_READ_LINES = 5000
"""Lines of ``events.jsonl`` a restore reads at a time."""
_RUN_EVENTS = 1000
_RUN_BYTES = 8 * 1024 * 1024
"""The most events and bytes one append of a restore carries (a stream's longer run is several
appends): every adapter takes an append this size (MongoDB's transactions stop at 16 MiB)."""


class BackupError(Exception):
    """A backup cannot be written, or a restore was refused; nothing was changed by a refusal."""


class BackupSummary(msgspec.Struct, frozen=True):
    directory: str
    events: int
    blobs: int
    manifest_root: str


async def create_backup(log: EventLog, raw: RawBackend, directory: str | os.PathLike[str]) -> BackupSummary:
    """Write the log, the blobs and a manifest into ``directory`` (created; must be empty).

    Raises:
        BackupError: the directory exists and is not empty.
    """
    target = Path(directory)
    if await asyncio.to_thread(_non_empty, target):
        raise BackupError(f"{target} is not empty; choose a new directory for the backup")
    # A backup holds everything the data directory does: private whatever the umask.
    await asyncio.to_thread(make_private_dir, target / RAW_DIR)
    head = await log.head()
    count = 0
    out = await asyncio.to_thread(_open_private, target / EVENTS)
    try:
        async for batch in log.iter_all(1):
            lines = [encode_event(e) + b"\n" for e in batch if (e.position or 0) <= head]
            await asyncio.to_thread(out.writelines, lines)
            count += len(lines)
            if batch and (batch[-1].position or 0) >= head:
                break
        await asyncio.to_thread(_flush, out)
    finally:
        out.close()
    index = []
    for key in await raw.list_all():
        data = await raw.retrieve(key)
        stat = await raw.stat(key)
        path = target / RAW_DIR / key
        await asyncio.to_thread(_write, path, data)
        index.append({"key": key, "content_type": stat.content_type})
    await asyncio.to_thread(_write, target / RAW_INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
    manifest = await manifest_of(FileSource(target, exclude={MANIFEST}))
    await asyncio.to_thread(_write, target / MANIFEST, manifest.to_json())
    return BackupSummary(str(target), count, len(index), manifest.root)


async def verify_backup(directory: str | os.PathLike[str]) -> ManifestVerification:
    """Check a backup directory against its manifest (missing, changed or extra files).

    Raises:
        BackupError: there is no readable manifest.
    """
    target = Path(directory)
    try:
        manifest = Manifest.from_json(await asyncio.to_thread((target / MANIFEST).read_bytes))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{target / MANIFEST} cannot be read: {exc}") from None
    return await verify_manifest(manifest, FileSource(target, exclude={MANIFEST}))


async def restore_backup(
    directory: str | os.PathLike[str],
    log: EventLog,
    raw: RawBackend,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BackupSummary:
    """Restore a backup into ``log`` and ``raw`` after verifying it.

    Args:
        progress: Called with the events restored so far and the backup's count after each append.
        force: Restore into a non-empty log or store: events already there (same id and
            content) are skipped, others are appended after them (new positions), blobs are
            overwritten.

    Raises:
        BackupError: the manifest does not match the files (nothing was written), or the
            target is not empty and ``force`` is not set (nothing was written), or the log
            assigned other hashes than the backup recorded.
    """
    target = Path(directory)
    verification = await verify_backup(target)
    if not verification.valid:
        raise BackupError(
            f"the backup in {target} does not match its manifest; nothing was restored:\n  "
            + "\n  ".join(verification.errors)
        )
    manifest = Manifest.from_json(await asyncio.to_thread((target / MANIFEST).read_bytes))
    if not force:
        head = await log.head()
        blobs = (await raw.list(limit=1)).keys
        if head or blobs:
            raise BackupError(
                f"the target is not empty (log head {head}, {'some' if blobs else 'no'} blobs); "
                "restore into an empty log and Raw store, or pass --force to merge into it"
            )
    total = await asyncio.to_thread(_count_lines, target / EVENTS)
    restored = 0
    empty_log = (await log.head()) == 0
    async for run in _stream_runs(target / EVENTS):
        stream = run[0].streamid or ""
        fresh = [_unplaced(e) for e in run]
        stored = await log.append(stream, fresh)
        if empty_log and not force:
            for original, now in zip(run, stored, strict=True):
                if (original.position, original.hash) != (now.position, now.hash):
                    raise BackupError(
                        f"event {original.id} was restored at position {now.position} with hash {now.hash}, "
                        f"but the backup recorded position {original.position} and hash {original.hash}"
                    )
        restored += len(run)
        if progress is not None:
            progress(restored, total)
    index = json.loads(await asyncio.to_thread((target / RAW_INDEX).read_bytes))
    for item in index:
        data = await asyncio.to_thread((target / RAW_DIR / check_key(item["key"])).read_bytes)
        await raw.store(item["key"], data, item.get("content_type") or "application/octet-stream")
    return BackupSummary(str(target), restored, len(index), manifest.root)


async def _stream_runs(path: Path) -> AsyncIterator[list[CloudEvent]]:
    """Consecutive events of the same stream, so each run is one atomic append, in order.

    The file is read ``_READ_LINES`` lines at a time: a backup of a large log is restored in
    bounded memory. A run is at most ``_RUN_EVENTS`` events and ``_RUN_BYTES`` (a longer one is
    several appends, placed one after the other all the same): the events of one stream that follow
    each other in the log may come from many appends, more than one append may carry.
    """
    run: list[CloudEvent] = []
    size = 0
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while True:
            lines = await asyncio.to_thread(_read_lines, fh, _READ_LINES)
            if not lines:
                break
            for line in lines:
                if not line.strip():
                    continue
                event = decode_event(line)
                if run and (
                    run[0].streamid != event.streamid or len(run) >= _RUN_EVENTS or size + len(line) > _RUN_BYTES
                ):
                    yield run
                    run, size = [], 0
                run.append(event)
                size += len(line)
    finally:
        fh.close()
    if run:
        yield run


def _read_lines(fh: BinaryIO, count: int) -> list[bytes]:
    lines = []
    for _ in range(count):
        line = fh.readline()
        if not line:
            break
        lines.append(line)
    return lines


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
    return count


def _unplaced(event: CloudEvent) -> CloudEvent:
    return msgspec.structs.replace(event, streamid=None, streamversion=None, position=None, prevhash=None, hash=None)


def _open_private(path: Path) -> BinaryIO:
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE), "wb")


def _write(path: Path, data: bytes) -> None:
    make_private_dir(path.parent, tighten_existing=False)
    with _open_private(path) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _non_empty(path: Path) -> bool:
    return path.exists() and any(path.iterdir())


def _flush(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())
