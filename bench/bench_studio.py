"""Studio: blob writes/s (1 KB JSON updates, each with its deltas) and delta applications/s.

The studio is built by its own bootstrap in this process on a SQLite event log with
``synchronous=FULL``. A write is ``Blobs.update`` (what ``PUT /blobs/{id}`` runs after
decoding): the previous version's content from the cache, the new content stored in Raw (every
version here is new content), the RFC 6902 patch computed with ``jsonpatch`` and checked to
reproduce the version, one event appended at the stream's version, and the fold caught up.
``WRITERS`` writers each update their own blob in turn, so the log's group commit shares fsyncs
among them as it does among HTTP clients, and the file Raw's group commit among their contents.
The target row stores content in the file Raw, fsync'd, as ``nexus up`` does; a second row
keeps it in a memory Raw (the studio and its log alone), the two alternated run by run.

Peer, in the same run: the same events' bodies inserted by bare ``sqlite3`` (WAL,
``synchronous=FULL``), one transaction each: what one writer without group commit gets.

Delta applications/s: ``apply_deltas`` of each recorded version's deltas to the previous
version's content (JSON patches of the 1 KB documents; line hunks of a 1 KB text).

Trigger to start (``_trigger_latency``): the studio and the workflow service in this process on
one SQLite FULL log and an in-memory bus, a client provider whose onCreate condition matches;
blobs are created one at a time, and each is timed from its write having returned (committed
and folded) to its run's ``StudioRunStarted`` folded: the follower matched the provider, the
start command went over the bus, the workflow service queued the execution (its own append),
and the run was recorded (the studio's append). p50 and p99 of every blob.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import shutil
import sqlite3
import statistics
import time
from typing import Any

import msgspec

from bench._harness import Context, Row, median_rate, percentile, target_row
from nexus.bus.memory import MemoryBus
from nexus.eventlog import open_event_log
from nexus.proto.events.studio import Delta
from nexus.raw.file import FileRaw
from nexus.raw.memory import MemoryRaw
from nexus.services.studio.blobs import BLOBS, Blobs
from nexus.services.studio.bootstrap import bootstrap
from nexus.services.studio.content import canonical_json
from nexus.services.studio.deltas import apply_deltas, compute_deltas
from nexus.services.studio.settings import load_settings

SUITE = "studio"
WRITERS = 32
_WORDS = ["ink", "river", "lantern", "north", "quiet", "ember", "harbor", "violet", "stone", "glass"]


def document(rng: random.Random, n: int) -> dict[str, Any]:
    """A chapter-like JSON document of about 1 KB."""
    return {
        "title": f"Chapter {n}",
        "status": rng.choice(["draft", "review", "final"]),
        "revision": n,
        "characters": [{"name": rng.choice(_WORDS).title(), "role": rng.choice(_WORDS)} for _ in range(6)],
        "paragraphs": [" ".join(rng.choice(_WORDS) for _ in range(14)) for _ in range(8)],
        "tags": rng.sample(_WORDS, 4),
    }


def edit(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    """The next version: a few fields changed, as an editor (or a provider) would."""
    new = msgspec.json.decode(msgspec.json.encode(doc))
    new["revision"] += 1
    new["paragraphs"][rng.randrange(len(new["paragraphs"]))] = " ".join(rng.choice(_WORDS) for _ in range(14))
    if rng.random() < 0.3:
        # A character replaced by a new one: the document stays about 1 KB however many versions.
        new["characters"].pop(rng.randrange(len(new["characters"])))
        new["characters"].append({"name": rng.choice(_WORDS).title(), "role": "new"})
    new["status"] = rng.choice(["draft", "review", "final"])
    return new


Pairs = list[tuple[bytes, list[Delta]]]


async def _writes(ctx: Context, total: int, *, file_raw: bool) -> tuple[float, list[bytes], Pairs, dict[str, bytes]]:
    """Blob writes/s through the studio; the event bodies written, (previous content, deltas)
    pairs, and every version's content by reference (what a replace delta reads).

    ``file_raw``: content in the file Raw (fsync'd, as ``nexus up`` runs it); else in memory,
    which measures the studio and its log alone."""
    workdir = ctx.workdir / "studio"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log = await open_event_log(f"sqlite:///{workdir / 'events.db'}")
    raw = FileRaw(workdir / "raw") if file_raw else MemoryRaw()
    bus = MemoryBus()
    await bus.ensure_streams()
    env = {"NEXUS_DATA_DIR": str(workdir), "NEXUS_STUDIO_PORT": "0"}
    settings = dataclasses.replace(load_settings(env), port=0)
    service = await bootstrap(settings, log=log, bus=bus, raw=raw)
    await service.start()
    blobs: Blobs = service.app[BLOBS]
    rng = random.Random(7)
    pairs: Pairs = []
    store: dict[str, bytes] = {}
    try:
        docs = [document(rng, i) for i in range(WRITERS)]
        ids = [(await blobs.create("bench", "key:bench", d, "application/json")).blob_id for d in docs]
        per_writer = max(1, total // WRITERS)

        async def writer(i: int) -> None:
            doc = docs[i]
            for _ in range(per_writer):
                doc = edit(rng, doc)
                await blobs.update(ids[i], "key:bench", doc)

        start = time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(WRITERS)))
        rate = WRITERS * per_writer / (time.perf_counter() - start)
        bodies = [msgspec.json.encode(e) for e in await log.read_all(1, None, ["nexus.studio.blob.updated"])]
        for blob_id in ids:
            blob = blobs.get(blob_id)
            for version in blob.versions:
                store[version.content_ref] = await blobs.content(version.content_ref)
            for previous, version in itertools.pairwise(blob.versions):
                pairs.append((store[previous.content_ref], version.deltas))
    finally:
        await service.stop()
        await log.close()
        await raw.close()
    return rate, bodies, pairs, store


async def _trigger_latency(ctx: Context, count: int) -> tuple[list[float], list[float]]:
    """Seconds from each blob write's return to its run's start recorded; and with the write."""
    from nexus.ingest import send_command
    from nexus.proto import new_event
    from nexus.proto.events.studio import ProviderRegistered
    from nexus.services.studio.state import PROVIDER_REGISTERED, PROVIDERS_STREAM, RUN_STARTED
    from nexus.services.studio.triggers import TRIGGERS
    from nexus.services.workflow.bootstrap import bootstrap as workflow_bootstrap
    from nexus.services.workflow.settings import load_settings as workflow_settings

    workdir = ctx.workdir / "studio-triggers"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log = await open_event_log(f"sqlite:///{workdir / 'events.db'}")
    close_log = log.close

    async def shared() -> None:
        """Both services stop; the log is closed once they have (below)."""

    log.close = shared  # type: ignore[method-assign]
    bus = MemoryBus()
    await bus.ensure_streams()
    raw = FileRaw(workdir / "raw")
    env = {"NEXUS_DATA_DIR": str(workdir), "NEXUS_STUDIO_PORT": "0", "NEXUS_WORKFLOW_PORT": "0"}
    workflow = await workflow_bootstrap(
        dataclasses.replace(workflow_settings({**env, "NEXUS_WORKFLOW_BUNDLED": "none"}), port=0),
        log=log,
        bus=bus,
        raw=raw,
    )
    await workflow.start()
    studio = await bootstrap(dataclasses.replace(load_settings(env), port=0), log=log, bus=bus, raw=raw)
    await studio.start()
    after: list[float] = []
    whole: list[float] = []
    try:
        # The run waits for an event that never comes: the bench times the start, not the run.
        waiting = {
            "id": "bench_wait",
            "steps": [{"id": "w", "type": "wait_event", "event": "x.y", "timeout_seconds": 600}],
        }
        await send_command(bus, "workflow", "register", {"kind": "workflow", "document": waiting}, source="bench")
        triggers = studio.app[TRIGGERS]
        fold = triggers.ctx.fold
        provider = {
            "provider": {"id": "bench", "name": "Bench", "type": "processor"},
            "workflows": [
                {
                    "workflow_id": "bench_wait",
                    "triggers": [
                        {
                            "event": "onCreate",
                            "conditions": [{"field": "metadata.type", "operator": "eq", "value": "bench-chapter"}],
                        }
                    ],
                    "priority": 50,
                }
            ],
        }
        registered = new_event(
            PROVIDER_REGISTERED, ProviderRegistered(provider=provider, owner="bench"), source="bench", tenant="bench"
        )
        await fold.append(PROVIDERS_STREAM, [registered])
        blobs: Blobs = studio.app[BLOBS]
        started: dict[str, asyncio.Event] = {}

        def on_start(event: Any) -> None:
            if event.type == RUN_STARTED:
                waiter = started.get(str(event.data.get("blob_id")))
                if waiter is not None:
                    waiter.set()

        fold.on_event(on_start)
        rng = random.Random(5)
        for i in range(count):
            blob_id = f"bench-{i}"
            started[blob_id] = asyncio.Event()
            begin = time.perf_counter()
            await blobs.create(
                "bench", "key:bench", document(rng, i), "application/json", {"type": "bench-chapter"}, blob_id=blob_id
            )
            written = time.perf_counter()
            await asyncio.wait_for(started[blob_id].wait(), 10)
            done = time.perf_counter()
            after.append(done - written)
            whole.append(done - begin)
    finally:
        await studio.stop()
        await workflow.stop()
        await close_log()
        await raw.close()
    return after, whole


def _bare_sqlite(ctx: Context, bodies: list[bytes]) -> float:
    """The same bodies inserted by bare sqlite3, one FULL transaction each."""
    path = ctx.workdir / "studio-peer.db"
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT, version INTEGER, body BLOB)")
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        con.execute("BEGIN")
        con.execute("INSERT INTO events (stream, version, body) VALUES (?, ?, ?)", (f"blob-{i % WRITERS}", i, body))
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return len(bodies) / elapsed


def _text_pairs(count: int) -> Pairs:
    """Line edits of a 1 KB markdown text, with their recorded hunks."""
    rng = random.Random(11)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(6)) + "\n" for _ in range(24)]
    pairs = []
    for _ in range(count):
        old = "".join(lines).encode()
        lines[rng.randrange(len(lines))] = " ".join(rng.choice(_WORDS) for _ in range(6)) + "\n"
        if rng.random() < 0.5:
            lines.insert(rng.randrange(len(lines)), "## " + rng.choice(_WORDS) + "\n")
            lines.pop(rng.randrange(len(lines)))
        new = "".join(lines).encode()
        pairs.append((old, compute_deltas(old, "text/markdown", new, "text/markdown", new_ref="r", new_sha256="s")))
    return pairs


async def run(ctx: Context) -> list[Row]:
    total = ctx.scale(6400, 640)
    file_rates: list[float] = []
    memory_rates: list[float] = []
    bodies: list[bytes] = []
    json_pairs: Pairs = []
    store: dict[str, bytes] = {}
    for _ in range(ctx.repeats):
        # Alternated, so that both rows see the same moments of a shared machine.
        rate, bodies, json_pairs, store = await _writes(ctx, total, file_raw=True)
        file_rates.append(rate)
        memory_rates.append((await _writes(ctx, total, file_raw=False))[0])
    ours = statistics.median(file_rates)
    in_memory = statistics.median(memory_rates)
    peer = await asyncio.to_thread(_bare_sqlite, ctx, bodies[: ctx.scale(2000, 300)])
    size = sum(len(canonical_json(msgspec.json.decode(p[0]))) for p in json_pairs) / max(1, len(json_pairs))
    kinds = {d.kind for _, deltas in json_pairs for d in deltas}

    def applications(pairs: Pairs) -> Any:
        async def work() -> int:
            for content, deltas in pairs:
                apply_deltas(content, deltas, fetch=store.__getitem__)
            return len(pairs)

        return work

    after, whole = await _trigger_latency(ctx, ctx.scale(1000, 100))
    text_pairs = _text_pairs(ctx.scale(5000, 500))
    json_rate = await median_rate(applications(json_pairs), ctx.repeats)
    text_rate = await median_rate(applications(text_pairs), ctx.repeats)
    return [
        target_row(
            SUITE,
            f"blob writes (1 KB JSON update + deltas, {WRITERS} writers, sqlite FULL; content in the file Raw, "
            "fsync'd: nexus up's default)",
            ours,
            "writes/s",
            at_least=2000,
            peer=f"bare sqlite3 one txn/event {peer:,.0f} (x{ours / peer:.1f})",
            note=f"documents ~{size:,.0f} B; delta kinds {', '.join(sorted(kinds))}; each new content a row of "
            "the file Raw's database, a batch of them one commit",
        ),
        target_row(
            SUITE,
            "blob writes (the same, content in a memory Raw: the studio and its log alone)",
            in_memory,
            "writes/s",
            note=f"runs alternated with the row above; file Raw / memory Raw x{ours / in_memory:.2f}",
        ),
        target_row(SUITE, "delta applications (json-patch, 1 KB documents)", json_rate, "deltas/s"),
        target_row(SUITE, "delta applications (text-diff, 1 KB text)", text_rate, "deltas/s"),
        target_row(
            SUITE,
            "blob write to its provider's workflow start p99 (sqlite FULL, in-process bus)",
            percentile(after, 99) * 1000,
            "ms",
            at_most=20,
            note=f"p50 {percentile(after, 50) * 1000:.1f} ms; with the write itself p50 "
            f"{percentile(whole, 50) * 1000:.1f} / p99 {percentile(whole, 99) * 1000:.1f} ms; {len(after)} blobs",
        ),
    ]
