"""Seed 003's end-to-end test context, shipped in ``nexus.testing``: the seed's complete pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus.proof import FileListSource, manifest_of_files, verify_manifest
from nexus.raw import RawQuotaError
from nexus.testing import (
    E2EContext,
    create_e2e_context,
    generate_test_events,
    read_test_file,
    write_test_file,
)


async def test_the_complete_pipeline_of_seed_003() -> None:
    # 1. Create the context.
    ctx = create_e2e_context()
    assert isinstance(ctx, E2EContext) and ctx.tmp_dir.is_dir()
    try:
        # 2. Generate and store events in the Atlas.
        events = generate_test_events(100)
        for event in events:
            ctx.atlas.insert(f"event-{event['index']}", event)
        # 3. Query them (the seed's filter form).
        results = ctx.atlas.query({"field": "type", "operator": "eq", "value": "test-event"})
        assert results.total == 100
        assert ctx.atlas.query({"data.category": "a"}).total == 34
        # 4. A summary in Raw, stamped by the context's clock.
        ctx.clock.advance(60)
        summary = {
            "totalEvents": len(events),
            "processedAt": ctx.clock.now(),
            "firstEventTimestamp": events[0]["timestamp"],
            "lastEventTimestamp": events[-1]["timestamp"],
        }
        await ctx.raw.store("summary.json", json.dumps(summary).encode())
        assert json.loads(await ctx.raw.retrieve("summary.json"))["processedAt"] == 1_700_000_060.0
        assert (await ctx.raw.stat("summary.json")).created == 1_700_000_060.0
        # 5. Files and their proof manifest.
        summary_path = write_test_file(ctx.tmp_dir, "data/summary.json", json.dumps(summary))
        events_path = write_test_file(ctx.tmp_dir, "data/events.json", json.dumps(events))
        manifest = await manifest_of_files([summary_path, events_path])
        assert [e.path for e in manifest.entries] == ["events.json", "summary.json"]
        verification = await verify_manifest(manifest, FileListSource([summary_path, events_path]))
        assert verification.valid and verification.errors == []
        assert read_test_file(summary_path) == json.dumps(summary).encode()
    finally:
        # 6. Clean up.
        ctx.cleanup()
    assert not ctx.tmp_dir.exists()
    ctx.cleanup()  # twice is harmless


def test_generated_events_are_deterministic() -> None:
    assert generate_test_events(5) == generate_test_events(5)
    first, second = generate_test_events(2)
    assert first == {
        "id": "event-0",
        "index": 0,
        "type": "test-event",
        "timestamp": 1_700_000_000_000,
        "data": {"value": 0, "category": "a", "even": True},
    }
    assert second["timestamp"] - first["timestamp"] == 1000
    assert generate_test_events(0) == []
    with pytest.raises(ValueError):
        generate_test_events(-1)


async def test_options_limit_raw_and_record_metrics_and_spans(tmp_path: Path) -> None:
    with create_e2e_context(max_raw_size=10, enable_metrics=True, enable_tracing=True, tmp_dir=tmp_path / "ctx") as ctx:
        assert ctx.tmp_dir == tmp_path / "ctx"
        await ctx.raw.store("a.bin", b"0123456789")
        with pytest.raises(RawQuotaError):
            await ctx.raw.store("b.bin", b"x")
        ctx.atlas.insert("k", {"type": "t"})
        ctx.atlas.query({"type": "t"})
        assert ctx.metrics is not None and ctx.tracer is not None
        assert ctx.metrics.counters and ctx.tracer.spans
    assert not (tmp_path / "ctx").exists()
    quiet = create_e2e_context()
    assert quiet.metrics is None and quiet.tracer is None and quiet.logger is None
    quiet.cleanup()


def test_test_files_stay_inside_their_directory(tmp_path: Path) -> None:
    written = write_test_file(tmp_path, "a/b/c.txt", b"\x00bytes")
    assert written == tmp_path.resolve() / "a" / "b" / "c.txt" and read_test_file(written) == b"\x00bytes"
    for bad in ("../escape.txt", "/etc/passwd", "a/../../x", "."):
        with pytest.raises(ValueError, match="inside the directory"):
            write_test_file(tmp_path, bad, "x")
