"""The contract on the SQLite adapter, and what only SQLite has: the file, WAL, group commit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from pathlib import Path

import msgspec
import pytest

from nexus.eventlog import (
    GENESIS_HASH,
    NO_STREAM,
    ConcurrencyError,
    DuplicateEventError,
    EventLog,
    EventLogArgumentError,
    EventLogUnavailableError,
    event_hash,
    open_event_log,
)
from nexus.eventlog import sqlite as sqlite_module
from nexus.eventlog.sqlite import _REPLAY_PAGE, SCHEMA_VERSION, SqliteEventLog
from nexus.proto import CloudEvent
from nexus.testing import EventLogContract, ev, evs, take


def url_for(tmp_path: Path, query: str = "") -> str:
    return f"sqlite:///{tmp_path / 'events.db'}{query}"


class TestSqliteEventLog(EventLogContract):
    async def make_log(self, tmp_path: Path) -> EventLog:
        log = await open_event_log(url_for(tmp_path))
        assert isinstance(log, SqliteEventLog)
        return log

    def record_subscription_reads(self, log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int] | None:
        # An idle subscriber looks again only every few seconds (other processes' commits wake
        # it): made frequent here, so the contract sees where each later read starts.
        monkeypatch.setattr(sqlite_module, "_WATCHED_POLL_S", sqlite_module._EXTERNAL_POLL_S)
        return _record_scans(monkeypatch)


def _record_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Where each read of a filtered subscription starts."""
    starts: list[int] = []
    real = sqlite_module._scan_types

    def scan(con: sqlite3.Connection, *, types: list[str], position: int) -> tuple[list[CloudEvent], int, bool]:
        starts.append(position)
        return real(con, types=types, position=position)

    monkeypatch.setattr(sqlite_module, "_scan_types", scan)
    return starts


async def open_sqlite(tmp_path: Path, query: str = "") -> SqliteEventLog:
    log = await open_event_log(url_for(tmp_path, query))
    assert isinstance(log, SqliteEventLog)
    return log


async def test_reopen_keeps_events_versions_and_the_chain(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    first = await log.append("s", evs(3))
    await log.append("t", evs(1))
    await log.close()
    # A new process sees everything, and appends continue the versions, positions and chain.
    log = await open_sqlite(tmp_path)
    try:
        assert await log.read_all() == [*first, *(await log.read_stream("t"))]
        assert await log.head() == 4
        with pytest.raises(ConcurrencyError):
            await log.append("s", evs(1), 2)
        [more] = await log.append("s", evs(1), 3)
        assert (more.position, more.streamversion, more.prevhash) == (5, 4, first[-1].hash)
        assert more.hash == event_hash(more)
        # A retry of an event stored before the reopen is still recognised.
        assert await log.append("s", first, 0) == first
    finally:
        await log.close()


async def test_appends_to_a_stream_the_writer_has_not_seen_continue_it(tmp_path: Path) -> None:
    # A fresh writer first guesses that a stream it has not seen is new (no lookup); for a
    # stream that exists, the store refuses version 1 and the append is placed after it.
    log = await open_sqlite(tmp_path)
    first = await log.append("s", evs(2))
    await log.close()
    log = await open_sqlite(tmp_path)
    try:
        [more] = await log.append("s", evs(1))
        assert (more.position, more.streamversion, more.prevhash) == (3, 3, first[-1].hash)
        assert more.hash == event_hash(more)
    finally:
        await log.close()
    for expected in (0, NO_STREAM):
        log = await open_sqlite(tmp_path)
        try:
            with pytest.raises(ConcurrencyError):
                await log.append("s", evs(1), expected)
            assert await log.append("s", first, expected) == first  # a retry is answered
            assert await log.head() == 3
        finally:
            await log.close()


async def test_wal_and_synchronous_full_by_default(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    try:
        pragmas = await log.pragmas()
        assert pragmas["journal_mode"] == "wal"
        assert pragmas["synchronous"] == "FULL"
        await log.append("s", evs(1))
        assert (tmp_path / "events.db-wal").exists()
    finally:
        await log.close()


async def test_synchronous_from_the_url(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path, "?synchronous=normal&busy_timeout=1234")
    try:
        pragmas = await log.pragmas()
        assert (pragmas["synchronous"], pragmas["busy_timeout"]) == ("NORMAL", 1234)
    finally:
        await log.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sqlite:///x.db?synchronous=sometimes", "synchronous"),
        ("sqlite:///x.db?journal=delete", "unknown parameter"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///", "no database file"),
        ("sqlite:///:memory:", "memory://"),
        ("cassandra://x", "unknown scheme"),
    ],
)
async def test_bad_urls(url: str, complaint: str) -> None:
    with pytest.raises(EventLogArgumentError, match=complaint):
        await open_event_log(url)


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    try:
        await log.append("warm-up", evs(1))
        transactions, appends = log.transactions, log.appends
        # 64 callers append at once; the writer commits them in far fewer transactions.
        results = await asyncio.gather(*(log.append(f"s{i}", [ev(n=i)]) for i in range(64)))
        assert sorted(r[0].position for r in results) == list(range(2, 66))
        assert log.appends - appends == 64
        assert log.transactions - transactions < 64 / 2
    finally:
        await log.close()


async def test_one_failing_append_does_not_fail_its_group(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    try:
        await log.append("contended", evs(1))
        stale = log.append("contended", evs(2), 0)  # fails: the stream exists
        fine = [log.append(f"s{i}", evs(2)) for i in range(10)]
        results = await asyncio.gather(stale, *fine, return_exceptions=True)
        assert isinstance(results[0], ConcurrencyError)
        assert all(isinstance(r, list) for r in results[1:])
        # Positions are dense: the refused append took none.
        assert [e.position for e in await log.read_all()] == list(range(1, 22))
    finally:
        await log.close()


async def test_a_store_failure_midway_through_a_batch_rolls_back_only_that_append(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    await log.close()
    # A trigger makes SQLite itself refuse the third row of a batch (a real failure mid-insert).
    with sqlite3.connect(tmp_path / "events.db") as con:
        con.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.type = 'nexus.test.refused' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the store'); END"
        )
    con.close()
    log = await open_sqlite(tmp_path)
    try:
        before = await log.append("s", evs(2))
        batch = [*evs(2), ev("nexus.test.refused"), *evs(2)]
        results = await asyncio.gather(
            log.append("s", batch, 2), log.append("neighbour", evs(3)), return_exceptions=True
        )
        assert isinstance(results[0], EventLogUnavailableError)
        assert "refused by the store" in str(results[0])
        assert isinstance(results[1], list)
        assert await log.stream_version("s") == 2
        assert await log.read_stream("s") == before
        assert [await log.get_event(e.id) for e in batch] == [None] * len(batch)
        # The stream carries on from version 2 with the chain intact.
        [after] = await log.append("s", evs(1), 2)
        assert (after.streamversion, after.prevhash) == (3, before[-1].hash)
        assert [e.position for e in await log.read_all()] == list(range(1, 7))
    finally:
        await log.close()


async def test_two_logs_on_one_file_keep_versions_right(tmp_path: Path) -> None:
    # Another process writing the same file must not be hidden by the writer's cached state.
    one, two = await open_sqlite(tmp_path), await open_sqlite(tmp_path)
    try:
        await one.append("s", evs(1))
        await two.append("s", evs(1), 1)
        with pytest.raises(ConcurrencyError):
            await one.append("s", evs(1), 1)
        [third] = await one.append("s", evs(1), 2)
        assert (third.position, third.streamversion) == (3, 3)
        stream = await two.read_stream("s")
        assert [e.prevhash for e in stream] == [GENESIS_HASH, stream[0].hash, stream[1].hash]
    finally:
        await one.close()
        await two.close()


async def test_schema_version_is_recorded_and_a_newer_one_refused(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    await log.close()
    with sqlite3.connect(tmp_path / "events.db") as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    con.close()
    with pytest.raises(EventLogUnavailableError, match="schema version"):
        await open_sqlite(tmp_path)


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "events.db").write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(EventLogUnavailableError):
        await open_sqlite(tmp_path)


async def test_a_page_of_many_events_decodes_in_order(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    try:
        stored = []
        for i in range(4):
            stored += await log.append(f"s{i}", evs(1234))
        batches = [batch async for batch in log.iter_all(0, batch_size=1000)]
        assert [e for b in batches for e in b] == stored
    finally:
        await log.close()


async def test_iter_all_joins_pages_into_batches_and_filters_types(tmp_path: Path) -> None:
    # iter_all reads pages of _REPLAY_PAGE events one ahead of decoding; batches still hold
    # exactly batch_size events (the last one the rest), in position order.
    log = await open_sqlite(tmp_path)
    try:
        stored = []
        for i in range(3):
            stored += await log.append(f"s{i}", [*evs(1700), *evs(300, "nexus.test.other")])
        assert _REPLAY_PAGE < 5000 < len(stored)
        batches = [batch async for batch in log.iter_all(0, batch_size=5000)]
        assert [len(b) for b in batches] == [5000, 1000]
        assert [e for b in batches for e in b] == stored
        others = [batch async for batch in log.iter_all(2, types=["nexus.test.other"], batch_size=500)]
        assert [len(b) for b in others] == [500, 400]
        assert [e for b in others for e in b] == [e for e in stored if e.type == "nexus.test.other"]
        with pytest.raises(EventLogArgumentError, match="batch_size"):
            [batch async for batch in log.iter_all(0, batch_size=0)]
        # A consumer that stops after the first batch leaves the log usable.
        async for first in log.iter_all(0, batch_size=10):
            assert first == stored[:10]
            break
        assert len(await log.read_all(5990)) == 11
    finally:
        await log.close()


async def test_stored_hashes_follow_the_documented_definition(tmp_path: Path) -> None:
    # Recomputed here from the definition in nexus.eventlog.chain, independently of its code:
    # sha256 over the placement array whose last item is the content digest.
    log = await open_sqlite(tmp_path)
    try:
        first, second = await log.append('order-"1"', evs(2))
        for event in (first, second):
            content = msgspec.structs.replace(
                event, streamid=None, streamversion=None, position=None, prevhash=None, hash=None
            )
            digest = hashlib.sha256(msgspec.json.encode(content, order="sorted")).hexdigest()
            placement = json.dumps(
                [event.streamid, event.streamversion, event.position, event.prevhash, digest], separators=(",", ":")
            )
            assert event.hash == hashlib.sha256(placement.encode()).hexdigest()
        assert second.prevhash == first.hash
        # The stored body decodes to the returned record.
        assert await log.read_stream('order-"1"') == [first, second]
    finally:
        await log.close()


async def test_a_file_of_schema_version_1_is_refused(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    await log.close()
    with sqlite3.connect(tmp_path / "events.db") as con:
        con.execute("UPDATE schema_version SET version = 1")
    con.close()
    with pytest.raises(EventLogUnavailableError, match="hashed events differently"):
        await open_sqlite(tmp_path)


@pytest.mark.parametrize("size", [3, 100, 101, 250])
async def test_a_used_id_inside_a_batch_fails_that_append_alone(tmp_path: Path, size: int) -> None:
    # Up to 100 events an append is one insert statement (SQLite undoes it by itself); longer
    # ones run in a savepoint. Either way the failing append leaves nothing behind, and the
    # appends committed in the same transaction are unaffected.
    log = await open_sqlite(tmp_path)
    try:
        [used] = await log.append("s", evs(1))
        batch = evs(size)
        batch[size // 2] = msgspec.structs.replace(used, data={"n": "other"})
        results = await asyncio.gather(
            log.append("t", batch), log.append("u", evs(2)), log.append("s", evs(1), 1), return_exceptions=True
        )
        assert isinstance(results[0], DuplicateEventError)
        assert [len(r) for r in results[1:]] == [2, 1]  # type: ignore[arg-type]
        assert await log.stream_version("t") == 0
        assert [e.position for e in await log.read_all()] == [1, 2, 3, 4]
        [after] = await log.append("s", evs(1), 2)
        assert (after.position, after.streamversion) == (5, 3)
    finally:
        await log.close()


async def test_a_long_append_with_data_that_is_not_json_stores_nothing(tmp_path: Path) -> None:
    # Appends of more than 100 events are encoded by the writer, chunk by chunk, while the
    # previous chunk is inserted: bad data in a later chunk still fails the whole append.
    log = await open_sqlite(tmp_path)
    try:
        batch = evs(250)
        batch[180] = msgspec.structs.replace(batch[180], data={"when": object()})
        with pytest.raises(EventLogArgumentError, match=r"events\[180\].*not JSON-serialisable"):
            await log.append("s", batch)
        assert await log.head() == 0
        stored = await log.append("s", evs(250))
        assert [e.position for e in stored] == list(range(1, 251))
        assert await log.read_all() == stored
    finally:
        await log.close()


async def test_a_filtered_subscription_reads_in_bounded_windows_and_pages_with_concurrent_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window of 7 positions and pages of 3 events: every boundary a long log has, in a short one.
    monkeypatch.setattr(sqlite_module, "_SCAN_WINDOW", 7)
    monkeypatch.setattr(sqlite_module, "_SUBSCRIBE_PAGE", 3)
    starts = _record_scans(monkeypatch)
    log = await open_sqlite(tmp_path)
    try:
        await log.append("early", evs(40, "nexus.test.other"))
        kinds = ("nexus.test.a", "nexus.test.other", "nexus.test.other", "nexus.test.a", "nexus.test.a")

        async def writer(n: int) -> None:
            for i in range(30):
                await log.append(f"w{n}", [ev(kinds[(n + i) % len(kinds)], i=i)])

        async with contextlib.aclosing(log.subscribe(types=["nexus.test.a"])) as tail:
            reader = asyncio.ensure_future(take(tail, 4 * 30 * 3 // 5, within=30))
            await asyncio.gather(*(writer(n) for n in range(4)))
            got = await reader
        assert got == await log.read_all(types=["nexus.test.a"])
        assert [e.position for e in got] == sorted({e.position for e in got})
        # The 40 events before the first match were looked at once, a window at a time.
        assert starts[:6] == [1, 8, 15, 22, 29, 36], starts
    finally:
        await log.close()


async def test_a_filtered_subscription_uses_the_type_index(tmp_path: Path) -> None:
    log = await open_sqlite(tmp_path)
    try:
        await log.append("s", evs(3))
        con = sqlite3.connect(url_for(tmp_path).removeprefix("sqlite:///"))
        try:
            plan = con.execute(
                "EXPLAIN QUERY PLAN SELECT position, body FROM events "
                "WHERE position >= ? AND position < ? AND type IN (?, ?) ORDER BY position LIMIT ?",
                [1, 100, "a", "b", 10],
            ).fetchall()
        finally:
            con.close()
        assert any("events_type_position" in str(row) for row in plan), plan
    finally:
        await log.close()


async def test_a_commit_wakes_only_the_subscribers_following_one_of_its_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No look for another process's appends during the test: only commits wake a subscriber.
    monkeypatch.setattr(sqlite_module, "_EXTERNAL_POLL_S", 30.0)
    starts = _record_scans(monkeypatch)
    log = await open_sqlite(tmp_path)
    try:
        async with (
            contextlib.aclosing(log.subscribe(types=["nexus.test.wanted"])) as filtered,
            contextlib.aclosing(log.subscribe()) as everything,
        ):
            wanted = asyncio.ensure_future(take(filtered, 1, within=5))
            await asyncio.sleep(0.1)
            assert starts == [1]
            others = await log.append("s", evs(3, "nexus.test.other"))
            # The unfiltered subscriber is woken and reads them; the filtered one sleeps on.
            assert await take(everything, 3, within=5) == others
            await asyncio.sleep(0.1)
            assert starts == [1]
            # A commit of a type it follows wakes it at once (not 30 s later), and its read
            # starts where it stood, past nothing it has not looked at.
            [event] = await log.append("t", [ev("nexus.test.wanted")])
            assert await wanted == [event]
            assert starts == [1, 1]
    finally:
        await log.close()
