"""Projections live and in replay: idempotence, checkpoints in Raw, resume, determinism."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus.atlas import Atlas
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import CloudEvent, new_event
from nexus.raw import open_raw
from nexus.replay import (
    CheckpointStore,
    Projection,
    ProjectionError,
    ProjectionRunner,
    StreamCatalog,
    follow,
    handles,
    replay,
)


class Items(Projection):
    """Seed 003's insert/update/delete log as events; totals per owner in a second collection."""

    name = "test.items"

    def setup(self, atlas: Atlas) -> None:
        atlas.collection("items").create_index("owner")

    @handles("test.item.created")
    def created(self, event: CloudEvent, atlas: Atlas) -> None:
        atlas.collection("items").insert(event.data["key"], {"owner": event.data["owner"], "n": event.data["n"]})
        self._total(atlas, event.data["owner"], event.data["n"])

    @handles("test.item.changed")
    def changed(self, event: CloudEvent, atlas: Atlas) -> None:
        items = atlas.collection("items")
        old = items.get(event.data["key"])
        if old is None:
            return
        items.update(event.data["key"], {**old.data, "n": event.data["n"]})
        self._total(atlas, old.data["owner"], event.data["n"] - old.data["n"])

    @handles("test.item.deleted")
    def deleted(self, event: CloudEvent, atlas: Atlas) -> None:
        items = atlas.collection("items")
        if items.has(event.data["key"]):
            old = items.delete(event.data["key"])
            self._total(atlas, old.data["owner"], -old.data["n"])

    @staticmethod
    def _total(atlas: Atlas, owner: str, delta: int) -> None:
        totals = atlas.collection("totals")
        current = totals.get(owner)
        totals.upsert(owner, {"n": (current.data["n"] if current else 0) + delta})


def ev(type_: str, **data) -> CloudEvent:  # type: ignore[no-untyped-def]
    return new_event(f"test.item.{type_}", data, source="test")


async def write_ops(log: MemoryEventLog, ops: list[tuple[str, int, int]]) -> None:
    created: set[int] = set()
    for kind, key, n in ops:
        stream = f"item-{key}"
        if key not in created:
            await log.append(stream, [ev("created", key=str(key), owner=f"o{key % 3}", n=n)])
            created.add(key)
        elif kind == "change":
            await log.append(stream, [ev("changed", key=str(key), n=n)])
        else:
            await log.append(stream, [ev("deleted", key=str(key))])
        await log.append("noise", [new_event("test.other", {"k": key}, source="test")])


async def test_live_and_replay_agree_and_redelivery_is_ignored() -> None:
    log = MemoryEventLog()
    await write_ops(log, [("change", 1, 5), ("change", 2, 3), ("change", 1, 9), ("delete", 2, 0)])
    live = ProjectionRunner(Items())
    events = await log.read_all()
    for event in events:
        live.apply(event)
    # A consumer redelivers a few events: nothing changes.
    assert not live.apply(events[0]) and not live.apply(events[3])
    _, result = await replay(log, Items())
    assert result.digest == live.digest()
    assert result.position == live.position == len(events)
    totals = {v.id: v.data["n"] for v in live.atlas.collection("totals")}
    assert totals == {"o1": 9, "o2": 0}


ops_strategy = st.lists(
    st.tuples(st.sampled_from(["change", "delete"]), st.integers(0, 6), st.integers(-50, 50)), max_size=40
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops_strategy, checkpoint_at=st.integers(0, 80), redeliver=st.lists(st.integers(0, 200), max_size=10))
async def test_random_sequences_live_equals_replay(ops, checkpoint_at, redeliver) -> None:  # type: ignore[no-untyped-def]
    log = MemoryEventLog()
    await write_ops(log, ops)
    events = await log.read_all()
    # Live: one event at a time, with redeliveries sprinkled in.
    live = ProjectionRunner(Items())
    for i, event in enumerate(events):
        live.apply(event)
        for r in redeliver:
            if r < i:
                live.apply(events[r])
    # Replay from scratch, and replay resumed from a checkpoint taken part-way.
    _, full = await replay(log, Items())
    raw = await open_raw("memory://")
    store = CheckpointStore(raw, Items.name)
    await replay(log, Items(), checkpoints=store, to_position=min(checkpoint_at, len(events)))
    _, resumed = await replay(log, Items(), checkpoints=store)
    assert live.digest() == full.digest == resumed.digest


async def test_resume_after_a_crash_from_the_last_checkpoint() -> None:
    log = MemoryEventLog()
    await write_ops(log, [("change", k % 7, k) for k in range(60)])
    head = await log.head()
    raw = await open_raw("memory://")
    store = CheckpointStore(raw, Items.name, keep=2)

    class Crashing(Items):
        name = "test.items"

        @handles("test.item.changed")
        def changed(self, event: CloudEvent, atlas: Atlas) -> None:
            if event.position and event.position > 70:
                raise RuntimeError("power cut")
            super().changed(event, atlas)

    with pytest.raises(ProjectionError, match="power cut"):
        await replay(log, Crashing(), checkpoints=store, checkpoint_every=10, batch_size=8)
    positions = await store.positions()
    assert 0 < len(positions) <= 2 and max(positions) <= 70
    # A new process resumes from the newest checkpoint and reaches the same views.
    _, resumed = await replay(log, Items(), checkpoints=store)
    assert resumed.resumed_from == max(positions) and resumed.position == head
    _, scratch = await replay(log, Items(), resume=False)
    assert resumed.digest == scratch.digest


async def test_corrupt_checkpoint_falls_back_to_an_older_one() -> None:
    log = MemoryEventLog()
    await write_ops(log, [("change", 1, 1), ("change", 2, 2)])
    raw = await open_raw("memory://")
    store = CheckpointStore(raw, Items.name)
    await replay(log, Items(), checkpoints=store, to_position=2)
    await replay(log, Items(), checkpoints=store)
    newest = (await raw.list_all("checkpoints/"))[-1]
    await raw.store(newest, b'{"broken": true}')
    assert (await store.latest()).position == 2


async def test_follow_checkpoints_live_and_replay_verifies_it() -> None:
    log = MemoryEventLog()
    raw = await open_raw("memory://")
    store = CheckpointStore(raw, Items.name)
    runner = ProjectionRunner(Items())
    stop = asyncio.Event()
    head = 24  # 12 operations, each one item event and one noise event
    caught_up = lambda r: r.position >= head and stop.set()  # noqa: E731
    task = asyncio.create_task(
        follow(log, runner, checkpoints=store, checkpoint_every=5, stop=stop, on_applied=caught_up)
    )
    await write_ops(log, [("change", k % 4, k) for k in range(12)])
    await asyncio.wait_for(task, 30)
    assert await log.head() == head
    live = await store.latest()
    assert live is not None and live.position == await log.head()
    _, rebuilt = await replay(log, Items(), resume=False, to_position=live.position)
    assert rebuilt.digest == live.digest


async def test_stream_catalog_counts_streams_and_types() -> None:
    log = MemoryEventLog()
    await write_ops(log, [("change", 1, 1), ("change", 1, 2)])
    runner, result = await replay(log, StreamCatalog())
    streams = runner.atlas.collection("streams")
    assert streams.get("item-1").data["events"] == 2 and streams.get("noise").data["events"] == 2
    assert runner.atlas.collection("event_types").get("test.other").data == {"events": 2}
    assert result.events_read == 4
