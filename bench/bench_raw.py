"""Raw: store and retrieve of small and large blobs with the file backend (fsync on)."""

from __future__ import annotations

import os
import statistics
import time

from bench._harness import Context, Row, target_row
from nexus.raw.file import FileRaw

SUITE = "raw"


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    raw = FileRaw(ctx.workdir / "raw")
    for label, size, count in (("1 KB", 1024, ctx.scale(500, 100)), ("10 MB", 10 * 1024 * 1024, ctx.scale(10, 3))):
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
        rows.append(target_row(SUITE, f"store {label} (file, fsync)", statistics.median(stores), "ms"))
        rows.append(target_row(SUITE, f"retrieve {label} (file)", statistics.median(reads), "ms"))
    return rows
