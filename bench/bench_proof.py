"""Proof: manifest build over many entries, log verification."""

from __future__ import annotations

import hashlib
import statistics
import time

from bench._harness import Context, Row, target_row
from nexus.eventlog.memory import MemoryEventLog
from nexus.proof import ManifestEntry, build_manifest, inclusion_proof, verify_inclusion_proof, verify_log
from nexus.proto import new_event

SUITE = "proof"


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    count = ctx.scale(10_000, 10_000)
    entries = [ManifestEntry(f"blobs/{i:06d}", i, hashlib.sha256(str(i).encode()).hexdigest()) for i in range(count)]
    timings = []
    for _ in range(ctx.repeats):
        t0 = time.perf_counter()
        manifest = build_manifest(entries)
        timings.append((time.perf_counter() - t0) * 1000)
    rows.append(
        target_row(SUITE, f"build manifest over {count:,} entries (digests given)", statistics.median(timings), "ms")
    )
    proof = inclusion_proof(manifest, entries[count // 2].path)
    t0 = time.perf_counter()
    assert verify_inclusion_proof(proof, manifest.root)
    rows.append(target_row(SUITE, "check one inclusion proof", (time.perf_counter() - t0) * 1000, "ms"))
    log = MemoryEventLog()
    events = ctx.scale(100_000, 10_000)
    for start in range(0, events, 500):
        await log.append(f"s-{start // 500}", [new_event("bench.x", {"i": i}, source="bench") for i in range(500)])
    rates = []
    for _ in range(ctx.repeats):
        t0 = time.perf_counter()
        report = await verify_log(log)
        rates.append(report.events / (time.perf_counter() - t0))
        assert report.ok
    rows.append(
        target_row(SUITE, f"verify log of {events:,} events (chains, hashes)", statistics.median(rates), "events/s")
    )
    return rows
