"""Raw: the file backend (fsync on), as ``nexus up`` runs it.

- One store at a time, then its retrieve: 1 KB (a row of the store's database) and 10 MB (a
  file), median latency.
- 1 KB stores from ``WRITERS`` concurrent writers (``store_if_absent`` of new keys, as the
  studio stores content), stores/s: rows, group-committed (the default), and every blob a file
  (``inline_max=0``: each batch's files written and fsynced by several threads).
- Peer, in the same run: one file per blob written the plain way (temporary file, fsync,
  rename, fsync of the directory) one at a time: what a store cost before group commit, less
  the metadata file it also wrote.
- The machine's fsync rate: a 1 KB write and ``fdatasync`` of one file, over and over, one at
  a time (what bounds any store that flushes alone).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from pathlib import Path

from bench._harness import Context, Row, target_row
from nexus.raw.file import FileRaw

SUITE = "raw"
WRITERS = 32


async def _concurrent(workdir: Path, total: int, inline_max: int) -> float:
    """Stores/s of ``total`` new 1 KB blobs from ``WRITERS`` writers."""
    shutil.rmtree(workdir, ignore_errors=True)
    raw = FileRaw(workdir, inline_max=inline_max)
    payload = os.urandom(1024)
    per_writer = max(1, total // WRITERS)

    async def writer(i: int) -> None:
        for j in range(per_writer):
            await raw.store_if_absent(f"t/bench/studio/sha256/{i:02d}{j:06d}", payload)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(WRITERS)))
        return per_writer * WRITERS / (time.perf_counter() - start)
    finally:
        await raw.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _plain_files(workdir: Path, total: int) -> float:
    """Files/s written one at a time: temporary file, fsync, rename, fsync of the directory."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    payload = os.urandom(1024)
    start = time.perf_counter()
    for i in range(total):
        tmp, final = workdir / f".tmp-{i}", workdir / f"blob-{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        directory = os.open(workdir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    rate = total / (time.perf_counter() - start)
    shutil.rmtree(workdir, ignore_errors=True)
    return rate


def _fsync_rate(path: Path, total: int) -> float:
    """fdatasyncs/s of one file rewritten in place (1 KB each time)."""
    payload = os.urandom(1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(total):
            os.pwrite(fd, payload, 0)
            os.fdatasync(fd)
        return total / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    raw = FileRaw(ctx.workdir / "raw")
    try:
        for label, size, count in (
            ("1 KB", 1024, ctx.scale(500, 100)),
            ("10 MB", 10 * 1024 * 1024, ctx.scale(10, 3)),
        ):
            payload = os.urandom(size)
            stores, reads = [], []
            for i in range(count):
                t0 = time.perf_counter()
                await raw.store(f"bench/{label.replace(' ', '')}/{i}", payload)
                stores.append((time.perf_counter() - t0) * 1000)
            for i in range(count):
                t0 = time.perf_counter()
                data = await raw.retrieve(f"bench/{label.replace(' ', '')}/{i}")
                reads.append((time.perf_counter() - t0) * 1000)
                assert len(data) == size
            where = "a row" if size <= raw.inline_max else "a file"
            rows.append(target_row(SUITE, f"store {label} (file Raw, {where}, fsync)", statistics.median(stores), "ms"))
            rows.append(target_row(SUITE, f"retrieve {label} (file Raw, {where})", statistics.median(reads), "ms"))
    finally:
        await raw.close()
    total = ctx.scale(4000, 800)
    as_rows, as_files, plain = [], [], []
    for _ in range(ctx.repeats):
        as_rows.append(await _concurrent(ctx.workdir / "rows", total, FileRaw(ctx.workdir).inline_max))
        as_files.append(await _concurrent(ctx.workdir / "files", total // 4, 0))
        plain.append(await asyncio.to_thread(_plain_files, ctx.workdir / "plain", total // 8))
    peer = statistics.median(plain)
    rows.append(
        target_row(
            SUITE,
            f"store 1 KB, {WRITERS} concurrent writers (file Raw: rows, one commit per batch)",
            statistics.median(as_rows),
            "stores/s",
            peer=f"one file per blob, one at a time {peer:,.0f} (x{statistics.median(as_rows) / peer:.1f})",
        )
    )
    rows.append(
        target_row(
            SUITE,
            f"store 1 KB, {WRITERS} concurrent writers (file Raw, inline_max=0: every blob a file and its metadata)",
            statistics.median(as_files),
            "stores/s",
            peer=f"one file per blob, one at a time {peer:,.0f} (x{statistics.median(as_files) / peer:.1f})",
        )
    )
    fsyncs = statistics.median(
        [await asyncio.to_thread(_fsync_rate, ctx.workdir / "fsync", ctx.scale(1000, 200)) for _ in range(ctx.repeats)]
    )
    rows.append(
        target_row(
            SUITE,
            "the machine's fsync rate (1 KB rewritten in place + fdatasync, one at a time)",
            fsyncs,
            "fsyncs/s",
            note="for reference: what any store flushed alone is bounded by",
        )
    )
    return rows
