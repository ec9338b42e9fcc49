"""Atlas: CRUD, the filter language, indexes, subscriptions, snapshots, hooks, concurrency."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.atlas import (
    Atlas,
    AtlasFilterError,
    AtlasSnapshotError,
    AtlasStore,
    AtlasViewExistsError,
    AtlasViewNotFoundError,
    FixedClock,
    RecordingMetrics,
    RecordingTracer,
    where,
)


def make_store() -> tuple[AtlasStore, FixedClock]:
    clock = FixedClock(1000.0)
    return AtlasStore("runs", clock=clock), clock


def test_crud_versions_and_times() -> None:
    store, clock = make_store()
    view = store.insert("a", {"status": "RUNNING"})
    assert (view.id, view.version, view.created, view.updated) == ("a", 1, 1000.0, 1000.0)
    clock.advance(5)
    updated = store.update("a", {"status": "DONE"})
    assert (updated.version, updated.created, updated.updated) == (2, 1000.0, 1005.0)
    assert store.upsert("b", {"status": "NEW"}).version == 1
    assert store.upsert("b", {"status": "OLD"}).version == 2
    assert store.get("a").data == {"status": "DONE"}
    assert store.has("a") and not store.has("zzz")
    assert store.get("zzz") is None
    assert store.delete("a").data == {"status": "DONE"}
    assert not store.has("a") and len(store) == 1


def test_missing_and_existing_keys_raise() -> None:
    store, _ = make_store()
    store.insert("a", 1)
    with pytest.raises(AtlasViewExistsError, match="'a' already exists"):
        store.insert("a", 2)
    with pytest.raises(AtlasViewNotFoundError, match="no view with id 'x'"):
        store.update("x", 1)
    with pytest.raises(AtlasViewNotFoundError):
        store.delete("x")
    assert store.get("a").data == 1


def _seeded() -> AtlasStore:
    store, _ = make_store()
    rows = {
        "r1": {"status": "RUNNING", "cost": {"total": 3}, "tags": ["a", "b"], "name": "alpha"},
        "r2": {"status": "DONE", "cost": {"total": 10}, "tags": ["b"], "name": "beta"},
        "r3": {"status": "FAILED", "cost": {"total": 7.5}, "name": "alphabet"},
        "r4": {"status": "RUNNING", "cost": {"total": "n/a"}, "flag": True},
        "r5": {"status": "RUNNING", "flag": 1},
    }
    for key, data in rows.items():
        store.insert(key, data)
    return store


def ids(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [v.id for v in result.views]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"status": {"eq": "RUNNING"}}, ["r1", "r4", "r5"]),
        ({"status": "DONE"}, ["r2"]),
        ({"status": {"ne": "RUNNING"}}, ["r2", "r3"]),
        ({"cost.total": {"gt": 3}}, ["r2", "r3"]),
        ({"cost.total": {"gte": 3, "lt": 10}}, ["r1", "r3"]),
        ({"cost.total": {"lte": 7.5}}, ["r1", "r3"]),
        ({"status": {"in": ["DONE", "FAILED"]}}, ["r2", "r3"]),
        ({"status": {"nin": ["DONE", "FAILED"]}}, ["r1", "r4", "r5"]),
        ({"tags": {"contains": "b"}}, ["r1", "r2"]),
        ({"name": {"contains": "bet"}}, ["r2", "r3"]),
        ({"flag": {"exists": True}}, ["r4", "r5"]),
        ({"cost": {"exists": False}}, ["r5"]),
        ({"name": {"prefix": "alpha"}}, ["r1", "r3"]),
        ({"flag": {"eq": True}}, ["r4"]),  # JSON equality: true is not 1
        ({"flag": 1}, ["r5"]),
        ({"tags.0": "b"}, ["r2"]),
        ({"or": [{"status": "DONE"}, {"name": {"prefix": "alphab"}}]}, ["r2", "r3"]),
        ({"and": [{"status": "RUNNING"}, {"not": {"flag": {"exists": True}}}]}, ["r1"]),
        ({"field": "status", "operator": "eq", "value": "FAILED"}, ["r3"]),  # seed 003's form
        ({}, ["r1", "r2", "r3", "r4", "r5"]),
    ],
)
def test_filter_language(spec, expected) -> None:  # type: ignore[no-untyped-def]
    store = _seeded()
    assert ids(store.query(spec)) == expected
    # The same query with every field indexed gives the same answer.
    for field in ("status", "cost.total", "flag", "name", "tags.0"):
        store.create_index(field, "sorted")
    assert ids(store.query(spec)) == expected


def test_python_builder_matches_dicts() -> None:
    store = _seeded()
    built = where("status").eq("RUNNING") & ~where("flag").exists()
    assert ids(store.query(built)) == ["r1"]
    assert ids(store.query(where("cost.total").gte(7) | where("name").prefix("alpha"))) == ["r1", "r2", "r3"]
    assert built.to_dict() == {"and": [{"status": {"eq": "RUNNING"}}, {"not": {"flag": {"exists": True}}}]}


@pytest.mark.parametrize(
    "spec",
    [{"status": {"equals": 1}}, {"and": []}, {"n": {"in": 3}}, {"n": {"gt": None}}, {"": 1}, [1], {"n": {}}],
)
def test_malformed_filters_are_refused(spec) -> None:  # type: ignore[no-untyped-def]
    store = _seeded()
    with pytest.raises(AtlasFilterError):
        store.query(spec)


def test_sort_limit_offset_and_total() -> None:
    store = _seeded()
    result = store.query({"status": "RUNNING"}, sort="-name", limit=2)
    assert result.total == 3
    assert ids(result) == ["r1", "r4"]  # descending: names first, views without one after
    page = store.query(None, sort=[("cost.total", "asc")], limit=2, offset=1)
    # Missing first (r5), then numbers ascending, then strings.
    assert ids(page) == ["r1", "r3"] and page.total == 5
    assert ids(store.query(None, limit=2, offset=3)) == ["r4", "r5"]
    with pytest.raises(AtlasFilterError):
        store.query(None, limit=-1)


def test_indexed_range_and_eq_use_the_index() -> None:
    store = AtlasStore("big")
    store.create_index("n", "sorted")
    store.create_index("group")
    for i in range(2000):
        store.insert(f"v{i:05d}", {"n": i, "group": i % 10})
    assert store.query({"n": {"gte": 1990}}).total == 10
    assert store.query({"group": 3, "n": {"lt": 100}}).total == 10
    store.update("v00003", {"n": -1, "group": 99})
    assert store.query({"group": 99}).total == 1 and store.query({"group": 3, "n": {"lt": 100}}).total == 9
    store.delete("v00013")
    assert store.query({"group": 3, "n": {"lt": 100}}).total == 8
    assert store.indexes() == {"group": "hash", "n": "sorted"}


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["a", "b", "ab"]), st.floats(-5, 5))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.dictionaries(st.text("abc", min_size=1, max_size=3), st.dictionaries(st.sampled_from("xy"), values)),
    op=st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in"]),
    operand=st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b"])),
)
def test_indexed_queries_agree_with_scans(rows, op, operand) -> None:  # type: ignore[no-untyped-def]
    plain, indexed = AtlasStore("p"), AtlasStore("i")
    indexed.create_index("x", "sorted")
    for key, data in rows.items():
        plain.insert(key, data)
        indexed.insert(key, data)
    spec = {"x": {op: [operand, None] if op == "in" else operand}}
    assert ids(plain.query(spec)) == ids(indexed.query(spec))


async def test_subscriptions_callback_and_async_iterator() -> None:
    store, _ = make_store()
    seen = []
    store.subscribe({"status": "RUNNING"}, seen.append)
    sub = store.subscribe({"status": {"in": ["RUNNING", "DONE"]}})
    store.insert("a", {"status": "RUNNING"})
    store.insert("b", {"status": "QUEUED"})  # matches neither
    store.update("a", {"status": "DONE"})  # leaves the first filter: still reported to it
    store.delete("a")
    sub.close()
    assert [(c.kind, c.id) for c in seen] == [("insert", "a"), ("update", "a")]
    got = [(c.kind, c.id, c.view.data if c.view else None) async for c in sub]
    assert got == [("insert", "a", {"status": "RUNNING"}), ("update", "a", {"status": "DONE"}), ("delete", "a", None)]


def test_failing_callback_does_not_undo_the_write(caplog: pytest.LogCaptureFixture) -> None:
    store, _ = make_store()

    def boom(change):  # type: ignore[no-untyped-def]
        raise RuntimeError("subscriber bug")

    store.subscribe(None, boom)
    store.insert("a", 1)
    assert store.get("a").data == 1
    assert "subscription callback failed" in caplog.text


def test_snapshot_restore_and_digests() -> None:
    clock = FixedClock()
    first = Atlas(clock=clock)
    second = Atlas(clock=FixedClock(5.0))
    first.collection("runs").create_index("status")
    for key in ("a", "b", "c"):
        first.collection("runs").insert(key, {"status": key.upper(), "k": {"z": 1, "a": 2}})
    for key in ("c", "a", "b"):  # another order, another clock
        second.collection("runs").insert(key, {"k": {"a": 2, "z": 1}, "status": key.upper()})
    assert first.digest() == second.digest()
    assert first.digest(data_only=False) != second.digest(data_only=False)
    snap = first.snapshot()
    assert snap == first.snapshot()  # deterministic bytes
    restored = Atlas()
    restored.restore(snap)
    assert restored.digest(data_only=False) == first.digest(data_only=False)
    assert restored.collection("runs").indexes() == {"status": "hash"}
    assert restored.collection("runs").query({"status": "B"}).total == 1
    with pytest.raises(AtlasSnapshotError):
        restored.restore(snap.replace(b'"A"', b'"X"'))
    with pytest.raises(AtlasSnapshotError):
        restored.restore(b"not json")
    assert restored.collection("runs").get("a").data["status"] == "A"  # a failed restore changes nothing


def test_metrics_and_tracer_are_told() -> None:
    metrics, tracer = RecordingMetrics(), RecordingTracer()
    store = AtlasStore("m", metrics=metrics, tracer=tracer)
    store.insert("a", 1)
    store.upsert("a", 2)
    store.query({})
    assert metrics.count("atlas_writes_total", op="insert") == 1
    assert metrics.count("atlas_writes_total", op="update") == 1
    assert metrics.count("atlas_queries_total") == 1
    assert tracer.spans == [("atlas.query", {"collection": "m"})]


async def test_parallel_inserts_from_many_tasks() -> None:
    store = AtlasStore("events")

    async def batch(index: int) -> None:
        for i in range(100):
            store.insert(f"event-{index * 100 + i}", {"batchId": index, "index": index * 100 + i})
            if i % 10 == 0:
                await asyncio.sleep(0)  # interleave with the other tasks

    await asyncio.gather(*(batch(b) for b in range(10)))
    assert len(store) == 1000
    assert store.query({"batchId": 7}).total == 100


async def test_mixed_reads_and_writes() -> None:
    store = AtlasStore("events")
    for i in range(20):
        store.insert(f"event-{i}", {"index": i})

    async def read(i: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return store.get(f"event-{i}")

    async def write(i: int) -> None:
        await asyncio.sleep(0)
        store.insert(f"new-{i}", {"index": i})

    results = await asyncio.gather(*(read(i) for i in range(20)), *(write(i) for i in range(30)))
    assert all(r is not None for r in results[:20])
    assert len(store) == 50
