"""Seed 003's workflows, each as one test against the Python API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from nexus.atlas import Atlas, AtlasViewNotFoundError, FixedClock
from nexus.backup import BackupError, create_backup, restore_backup
from nexus.eventlog.memory import MemoryEventLog
from nexus.proof import FileSource, RawSource, manifest_of, verify_manifest
from nexus.proto import new_event
from nexus.raw import RawNotFoundError, open_raw
from nexus.replay import CheckpointStore, Projection, handles, replay


def generate_events(count: int) -> list[dict]:  # type: ignore[type-arg]
    return [
        {"index": i, "type": "test-event", "timestamp": 1_700_000_000 + i, "payload": f"p{i}"} for i in range(count)
    ]


async def test_complete_pipeline(tmp_path: Path) -> None:
    clock = FixedClock(1_800_000_000.0)
    atlas = Atlas(clock=clock).collection("events")
    raw = await open_raw(f"file://{tmp_path / 'raw'}", clock=clock)
    # 1-2. Ingest events into Atlas; 3. query them.
    events = generate_events(100)
    for event in events:
        atlas.insert(f"event-{event['index']}", event)
    assert atlas.query({"field": "type", "operator": "eq", "value": "test-event"}).total == 100
    # 4. Store a summary in Raw; 5. build and verify a proof over the written files.
    summary = {"totalEvents": 100, "processedAt": clock.now(), "first": events[0]["timestamp"]}
    await raw.store("summary.json", json.dumps(summary).encode(), "application/json")
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.json").write_text(json.dumps(summary))
    (data / "events.json").write_text(json.dumps(events))
    manifest = await manifest_of(FileSource(data))
    assert (await verify_manifest(manifest, FileSource(data))).valid
    assert len(manifest.entries) == 2


async def test_backup_and_restore(tmp_path: Path) -> None:
    log, raw = MemoryEventLog(), await open_raw("memory://")
    for i in range(5):
        await log.append(f"order-{i % 2}", [new_event("test.order.placed", {"i": i}, source="test")])
    await raw.store("reports/a.json", b'{"a": 1}', "application/json")
    summary = await create_backup(log, raw, tmp_path / "backup")
    assert (summary.events, summary.blobs) == (5, 1)
    # Restore into an empty log and store: the same events at the same positions and hashes.
    log2, raw2 = MemoryEventLog(), await open_raw("memory://")
    await restore_backup(tmp_path / "backup", log2, raw2)
    assert [e.hash for e in await log2.read_all()] == [e.hash for e in await log.read_all()]
    assert (await raw2.stat("reports/a.json")).content_type == "application/json"
    # A non-empty target is refused without --force, and nothing changes.
    with pytest.raises(BackupError, match="not empty"):
        await restore_backup(tmp_path / "backup", log2, raw2)
    assert await log2.head() == 5
    # A tampered backup is refused before anything is written.
    (tmp_path / "backup/raw/reports/a.json").write_bytes(b'{"a": 2}')
    log3, raw3 = MemoryEventLog(), await open_raw("memory://")
    with pytest.raises(BackupError, match=r"changed: raw/reports/a\.json"):
        await restore_backup(tmp_path / "backup", log3, raw3)
    assert await log3.head() == 0 and await raw3.list_all() == []


async def test_concurrent_operations() -> None:
    atlas = Atlas().collection("events")
    raw = await open_raw("memory://")

    async def insert_batch(batch: int) -> None:
        for e in generate_events(100):
            atlas.insert(f"event-{batch * 100 + e['index']}", {**e, "batchId": batch})
            await asyncio.sleep(0)

    await asyncio.gather(
        *(insert_batch(b) for b in range(10)),
        *(raw.store(f"file-{i}.dat", f"data-{i}".encode()) for i in range(100)),
    )
    assert len(atlas) == 1000 and len(await raw.list_all()) == 100
    reads = await asyncio.gather(*(asyncio.to_thread(atlas.get, f"event-{i}") for i in range(20)))
    assert all(r is not None for r in reads)


async def test_replay_and_checkpointing() -> None:
    class Log(Projection):
        name = "seed.log"

        @handles("seed.insert")
        def insert(self, event, atlas):  # type: ignore[no-untyped-def]
            atlas.collection("views").insert(event.data["key"], event.data["data"])

        @handles("seed.update")
        def update(self, event, atlas):  # type: ignore[no-untyped-def]
            atlas.collection("views").update(event.data["key"], event.data["data"])

        @handles("seed.delete")
        def delete(self, event, atlas):  # type: ignore[no-untyped-def]
            atlas.collection("views").delete(event.data["key"])

    log, raw = MemoryEventLog(), await open_raw("memory://")
    for i in range(100):
        await log.append("entries", [new_event("seed.insert", {"key": f"event-{i}", "data": {"i": i}}, source="t")])
    await log.append("entries", [new_event("seed.update", {"key": "event-1", "data": {"i": -1}}, source="t")])
    await log.append("entries", [new_event("seed.delete", {"key": "event-2"}, source="t")])
    store = CheckpointStore(raw, "seed.log")
    # Process the first 50, checkpoint, then a "later" process resumes from the checkpoint.
    first, _ = await replay(log, Log(), checkpoints=store, to_position=50)
    assert len(first.atlas.collection("views")) == 50
    resumed, result = await replay(log, Log(), checkpoints=store)
    assert result.resumed_from == 50 and result.events_read == 52
    _, scratch = await replay(log, Log(), resume=False)
    assert resumed.digest() == scratch.digest  # replay is deterministic
    assert resumed.atlas.collection("views").get("event-1").data == {"i": -1}


async def test_audit_trail(tmp_path: Path) -> None:
    clock = FixedClock(1_800_000_000.0)
    atlas = Atlas(clock=clock).collection("audit")
    raw = await open_raw(f"file://{tmp_path}", clock=clock)
    trail = []
    for action, key, data in [("create", "k1", {"v": 1}), ("create", "k2", {"v": 2}), ("modify", "k1", {"v": 3})]:
        (atlas.insert if action == "create" else atlas.update)(key, data)
        record = {"action": action, "key": key, "data": data, "timestamp": clock.now()}
        await raw.store(f"audit/{int(clock.now())}-{action}-{key}.json", json.dumps(record).encode())
        trail.append(record)
        clock.advance(1)
    manifest = await manifest_of(RawSource(raw, "audit/"))
    assert len(manifest.entries) == 3 and (await verify_manifest(manifest, RawSource(raw, "audit/"))).valid
    await raw.delete(manifest.entries[0].path)
    result = await verify_manifest(manifest, RawSource(raw, "audit/"))
    assert result.errors == [f"missing: {manifest.entries[0].path}"]


async def test_error_handling() -> None:
    atlas = Atlas().collection("events")
    raw = await open_raw("memory://")
    assert atlas.get("non-existent") is None
    with pytest.raises(AtlasViewNotFoundError):
        atlas.update("non-existent", {})
    with pytest.raises(RawNotFoundError):
        await raw.retrieve("non-existent.txt")
    # Graceful degradation: duplicates fail one by one, the rest goes in.
    results = []
    for e in [*generate_events(5), {"index": 2}]:
        try:
            atlas.insert(f"event-{e['index']}", e)
            results.append(True)
        except Exception:
            results.append(False)
    assert results == [True] * 5 + [False]
    # Retry: a transient failure is retried until it succeeds.
    attempts = 0

    async def flaky() -> bytes:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RawNotFoundError("file.txt")
        return b"ok"

    async def with_retry(op, max_attempts: int = 3):  # type: ignore[no-untyped-def]
        for attempt in range(1, max_attempts + 1):
            try:
                return await op()
            except RawNotFoundError:
                if attempt == max_attempts:
                    raise
                await asyncio.sleep(0.001 * attempt)

    assert await with_retry(flaky) == b"ok" and attempts == 3
