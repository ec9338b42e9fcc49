"""The contract on the PostgreSQL adapter, against a real server started for the session, and what
only PostgreSQL has: the watermark under concurrent transactions, LISTEN/NOTIFY, group commit
counted by the server, reopening, the URL forms.

The server comes from ``nexus.testing._postgres`` (the machine's PostgreSQL binaries, installed
from Debian's package where missing); where none can be started, every test here is skipped
with the reason. Each test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nexus.eventlog import (
    GENESIS_HASH,
    ConcurrencyError,
    EventLog,
    EventLogArgumentError,
    EventLogUnavailableError,
    chain,
    event_hash,
    open_event_log,
)
from nexus.eventlog import postgres as postgres_module
from nexus.eventlog.postgres import SCHEMA_VERSION, PostgresEventLog, mask_password
from nexus.proto import CloudEvent
from nexus.testing import EventLogContract, ev, evs, take
from nexus.testing._postgres import PostgresServer, PostgresUnavailable

pytestmark = pytest.mark.postgres


async def open_pg(url: str) -> PostgresEventLog:
    log = await open_event_log(url)
    assert isinstance(log, PostgresEventLog)
    return log


class TestPostgresEventLog(EventLogContract):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_database: str) -> None:
        self.url = postgres_database

    async def make_log(self, tmp_path: Path) -> EventLog:
        return await open_pg(self.url)

    def record_subscription_reads(self, log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int] | None:
        return _record_scans(monkeypatch)


def _record_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Where each read of a filtered subscription starts."""
    starts: list[int] = []
    real = postgres_module._scan_types

    async def scan(log: PostgresEventLog, types: list[str], position: int) -> tuple[list[CloudEvent], int, bool]:
        starts.append(position)
        return await real(log, types, position)

    monkeypatch.setattr(postgres_module, "_scan_types", scan)
    return starts


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgresEventLog]:
    log = await open_pg(url)
    try:
        yield log
    finally:
        await log.close()


# ---- the watermark ------------------------------------------------------------------------


async def test_an_open_transaction_holding_a_lower_position_holds_back_every_higher_one(postgres_database: str) -> None:
    async with opened(postgres_database) as log:
        first = await log.append("s", evs(2))
        # Another connection runs an append's transaction by hand and keeps it open: it holds
        # the head (position 3 is its) and has inserted its event, uncommitted.
        [held] = [chain.seal(ev(n="held"), stream_id="held", version=1, position=3, prevhash=GENESIS_HASH)]
        async with await psycopg.AsyncConnection.connect(postgres_database) as other:
            await other.execute("SELECT position FROM eventlog_head FOR UPDATE")
            await other.execute(
                "INSERT INTO eventlog_events (position, stream_id, version, event_id, type, body) "
                "VALUES (3, 'held', 1, %s, %s, %s)",
                [held.id, held.type, postgres_module._json.encode(held)],
            )
            await other.execute("UPDATE eventlog_head SET position = 3")
            # A later append of this log must take a higher position, so it cannot commit first.
            later = asyncio.ensure_future(log.append("t", evs(1)))
            await asyncio.sleep(0.5)
            assert not later.done()
            # Readers see neither: the head, every read and a subscription stop at position 2.
            assert await log.head() == 2
            assert await log.read_all() == first
            async with contextlib.aclosing(log.subscribe(3)) as tail:
                with pytest.raises(TimeoutError):
                    await take(tail, 1, within=0.5)
            await other.commit()
        [after] = await asyncio.wait_for(later, 10)
        assert after.position == 4
        # Once the lower one commits, both are seen, in position order, with no hole.
        assert [e.position for e in await log.read_all()] == [1, 2, 3, 4]
        async with contextlib.aclosing(log.subscribe(3)) as tail:
            assert [e.id for e in await take(tail, 2)] == [held.id, after.id]


async def test_two_logs_appending_at_once_commit_in_position_order(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two logs (two processes, as far as the server knows): one is stopped inside its write
    # transaction, after it placed its events; the other's append waits behind it.
    async with opened(postgres_database) as reader:
        paused, resume = threading.Event(), threading.Event()
        real_seal = chain.seal_content
        pausing_thread: list[int] = []

        def seal(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() in pausing_thread:
                paused.set()
                resume.wait(10)
            return real_seal(*args, **kwargs)

        def run_slow_log() -> list[CloudEvent]:
            async def main() -> list[CloudEvent]:
                async with opened(postgres_database) as slow:
                    pausing_thread.append(threading.get_ident())
                    return await slow.append("slow", evs(1))

            return asyncio.run(main())

        monkeypatch.setattr(chain, "seal_content", seal)
        slow = asyncio.ensure_future(asyncio.to_thread(run_slow_log))
        try:
            assert await asyncio.to_thread(paused.wait, 10)
            fast = asyncio.ensure_future(reader.append("fast", evs(1)))
            await asyncio.sleep(0.5)
            # The slow log holds position 1 in its open transaction: the fast one cannot commit 2.
            assert not fast.done()
            assert await reader.head() == 0
            assert await reader.read_all() == []
        finally:
            resume.set()
        [slow_event] = await asyncio.wait_for(slow, 10)
        [fast_event] = await asyncio.wait_for(fast, 10)
        assert (slow_event.position, fast_event.position) == (1, 2)
        assert await reader.read_all() == [slow_event, fast_event]


async def test_an_append_behind_a_stuck_transaction_fails_in_bounded_time(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "_LOCK_TIMEOUT_S", 1)
    async with opened(postgres_database) as log:
        await log.append("s", evs(1))
        async with await psycopg.AsyncConnection.connect(postgres_database) as stuck:
            # Another process took the head and stopped there.
            await stuck.execute("SELECT position FROM eventlog_head FOR UPDATE")
            started = asyncio.get_running_loop().time()
            results = await asyncio.gather(log.append("s", evs(1)), log.append("t", evs(1)), return_exceptions=True)
            waited = asyncio.get_running_loop().time() - started
            # Both fail together (not tried again one by one, which would wait twice), and say
            # that a retry with the same ids is safe.
            assert all(isinstance(r, EventLogUnavailableError) for r in results), results
            assert "retry with the same event ids" in str(results[0])
            assert waited < 5
            await stuck.rollback()
        # The log carries on once the head is free.
        [after] = await log.append("s", evs(1), 1)
        assert (after.position, after.streamversion) == (2, 2)


# ---- LISTEN/NOTIFY --------------------------------------------------------------------------


async def test_a_commit_by_another_log_wakes_a_subscriber_through_notify_not_polling(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No safety poll during the test: only a notification can wake the subscribers.
    monkeypatch.setattr(postgres_module, "_SAFETY_POLL_S", 60.0)
    starts = _record_scans(monkeypatch)
    async with opened(postgres_database) as writer, opened(postgres_database) as follower:
        async with (
            contextlib.aclosing(follower.subscribe(types=["nexus.test.wanted"])) as filtered,
            contextlib.aclosing(follower.subscribe()) as everything,
        ):
            wanted = asyncio.ensure_future(take(filtered, 1, within=5))
            # Idle: nothing is read while nothing is committed (no busy poll).
            await asyncio.sleep(0.3)
            assert starts == [1]
            await asyncio.sleep(0.5)
            assert starts == [1]
            # Another log's commit wakes the unfiltered subscriber at once.
            others = await writer.append("s", evs(3, "nexus.test.other"))
            assert await take(everything, 3, within=5) == others
            # A commit of a type the filtered one follows wakes it at once, not 60 s later.
            [event] = await writer.append("t", [ev("nexus.test.wanted")])
            assert await wanted == [event]
            assert starts[-1] <= event.position


async def test_a_listener_that_loses_its_connection_reconnects(
    postgres_database: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "_SAFETY_POLL_S", 60.0)
    async with opened(postgres_database) as writer, opened(postgres_database) as follower:
        async with contextlib.aclosing(follower.subscribe()) as tail:
            # The server ends every listening connection (as a restart or a proxy would).
            async with await psycopg.AsyncConnection.connect(postgres_database, autocommit=True) as admin:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
                )
            await asyncio.sleep(0.5)
            [event] = await writer.append("s", evs(1))
            assert await take(tail, 1, within=5) == [event]


# ---- group commit ---------------------------------------------------------------------------


async def test_group_commit_batches_concurrent_appends_counted_by_the_server(postgres_database: str) -> None:
    async with opened(postgres_database) as log:
        await log.append("warm-up", evs(1))
        transactions, appends = log.transactions, log.appends
        # 64 callers append at once; the writer commits them in far fewer transactions.
        results = await asyncio.gather(*(log.append(f"s{i}", [ev(n=i)]) for i in range(64)))
        assert sorted(r[0].position for r in results) == list(range(2, 66))
        assert log.appends - appends == 64
        ours = log.transactions - transactions
        assert ours < 64 / 2
        # The server's own count: the distinct transactions that wrote those rows.
        async with await psycopg.AsyncConnection.connect(postgres_database) as con:
            cursor = await con.execute("SELECT count(DISTINCT xmin::text) FROM eventlog_events WHERE position > 1")
            assert await cursor.fetchone() == (ours,)


async def test_one_failing_append_does_not_fail_its_group(postgres_database: str) -> None:
    async with opened(postgres_database) as log:
        await log.append("contended", evs(1))
        stale = log.append("contended", evs(2), 0)  # fails: the stream exists
        fine = [log.append(f"s{i}", evs(2)) for i in range(10)]
        results = await asyncio.gather(stale, *fine, return_exceptions=True)
        assert isinstance(results[0], ConcurrencyError)
        assert all(isinstance(r, list) for r in results[1:])
        assert [e.position for e in await log.read_all()] == list(range(1, 22))


async def test_a_store_refusing_one_append_of_a_group_fails_that_append_alone(postgres_database: str) -> None:
    # A trigger makes PostgreSQL itself refuse one event type (a real failure of the insert).
    async with await psycopg.AsyncConnection.connect(postgres_database, autocommit=True) as admin:
        async with opened(postgres_database):
            pass  # creates the tables
        await admin.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the store'; END $$"
        )
        await admin.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON eventlog_events FOR EACH ROW "
            "WHEN (NEW.type = 'nexus.test.refused') EXECUTE FUNCTION refuse()"
        )
    async with opened(postgres_database) as log:
        before = await log.append("s", evs(2))
        batch = [*evs(2), ev("nexus.test.refused"), *evs(2)]
        results = await asyncio.gather(
            log.append("s", batch, 2), log.append("neighbour", evs(3)), return_exceptions=True
        )
        assert isinstance(results[0], EventLogUnavailableError)
        assert "refused by the store" in str(results[0])
        assert isinstance(results[1], list)
        assert await log.read_stream("s") == before
        [after] = await log.append("s", evs(1), 2)
        assert (after.streamversion, after.prevhash) == (3, before[-1].hash)
        assert [e.position for e in await log.read_all()] == list(range(1, 7))


async def test_a_retry_queued_beside_its_original_is_answered_with_the_same_records(postgres_database: str) -> None:
    async with opened(postgres_database) as log:
        batch = evs(3)
        first, again = await asyncio.gather(log.append("s", batch), log.append("s", batch))
        assert first == again
        assert await log.head() == 3


async def test_iter_all_joins_pages_into_batches_and_filters_types(postgres_database: str) -> None:
    # iter_all fetches pages of _REPLAY_PAGE events one ahead of decoding; batches still hold
    # exactly batch_size events (the last one the rest), in position order.
    async with opened(postgres_database) as log:
        stored = []
        for i in range(3):
            stored += await log.append(f"s{i}", [*evs(1700), *evs(300, "nexus.test.other")])
        assert postgres_module._REPLAY_PAGE < 5000 < len(stored)
        batches = [batch async for batch in log.iter_all(0, batch_size=5000)]
        assert [len(b) for b in batches] == [5000, 1000]
        assert [e for b in batches for e in b] == stored
        others = [batch async for batch in log.iter_all(2, types=["nexus.test.other"], batch_size=500)]
        assert [len(b) for b in others] == [500, 400]
        assert [e for b in others for e in b] == [e for e in stored if e.type == "nexus.test.other"]
        # A consumer that stops after the first batch leaves the log usable.
        async for first in log.iter_all(0, batch_size=10):
            assert first == stored[:10]
            break
        assert len(await log.read_all(5990)) == 11


# ---- reopening, two logs, the schema ------------------------------------------------------


async def test_reopen_keeps_events_versions_and_the_chain(postgres_database: str) -> None:
    async with opened(postgres_database) as log:
        first = await log.append("s", evs(3))
        await log.append("t", evs(1))
    async with opened(postgres_database) as log:
        assert await log.read_all() == [*first, *(await log.read_stream("t"))]
        assert await log.head() == 4
        with pytest.raises(ConcurrencyError):
            await log.append("s", evs(1), 2)
        [more] = await log.append("s", evs(1), 3)
        assert (more.position, more.streamversion, more.prevhash) == (5, 4, first[-1].hash)
        assert more.hash == event_hash(more)
        assert await log.append("s", first, 0) == first  # a retry from before the reopen


async def test_two_logs_on_one_database_keep_versions_and_the_chain_right(postgres_database: str) -> None:
    # Each log caches its streams' last version and hash; the other's commits must invalidate it.
    async with opened(postgres_database) as one, opened(postgres_database) as two:
        await one.append("s", evs(1))
        await two.append("s", evs(1), 1)
        with pytest.raises(ConcurrencyError):
            await one.append("s", evs(1), 1)
        [third] = await one.append("s", evs(1), 2)
        assert (third.position, third.streamversion) == (3, 3)
        stream = await two.read_stream("s")
        assert [e.prevhash for e in stream] == [GENESIS_HASH, stream[0].hash, stream[1].hash]
        assert all(e.hash == event_hash(e) for e in stream)


async def test_the_schema_version_is_recorded_and_a_newer_one_refused(postgres_database: str) -> None:
    async with opened(postgres_database):
        pass
    async with await psycopg.AsyncConnection.connect(postgres_database, autocommit=True) as con:
        cursor = await con.execute("SELECT version FROM eventlog_schema")
        assert await cursor.fetchall() == [(SCHEMA_VERSION,)]
        await con.execute("UPDATE eventlog_schema SET version = %s", [SCHEMA_VERSION + 1])
    with pytest.raises(EventLogUnavailableError, match="schema version"):
        await open_pg(postgres_database)


async def test_concurrent_first_opens_create_the_tables_once(postgres_database: str) -> None:
    logs = await asyncio.gather(*(open_pg(postgres_database) for _ in range(4)))
    try:
        stored = await asyncio.gather(*(log.append(f"s{i}", evs(1)) for i, log in enumerate(logs)))
        assert sorted(e[0].position for e in stored) == [1, 2, 3, 4]
    finally:
        for log in logs:
            await log.close()


# ---- URLs and secrets -----------------------------------------------------------------------


async def test_url_forms(postgres_database: str, postgres_server: PostgresServer) -> None:
    name = postgres_database.rsplit("/", 1)[1]
    for url in (
        postgres_database,
        postgres_database.replace("postgresql://", "postgres://", 1),
        postgres_server.socket_url(name),
        postgres_database + "?pool_size=2&application_name=nexus-test",
    ):
        async with opened(url) as log:
            await log.append(f"s-{len(url)}", evs(1))
    async with opened(postgres_database) as log:
        assert await log.head() == 4


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("postgresql://u@h/db?pool_size=0", "pool_size"),
        ("postgresql://u@h/db?pool_size=many", "pool_size"),
        ("postgresql://u@h/db?no_such_option=1", "not a usable PostgreSQL URL"),
    ],
)
async def test_bad_urls(url: str, complaint: str) -> None:
    with pytest.raises(EventLogArgumentError, match=complaint):
        await open_event_log(url)


async def test_the_password_is_never_shown(postgres_database: str, postgres_server: PostgresServer) -> None:
    async with opened(postgres_database) as log:
        assert postgres_server.password not in log.url
        assert "***" in log.url
        assert postgres_server.password not in repr(log.options)
    wrong = postgres_database.replace(postgres_server.password, "not-the-password", 1)
    with pytest.raises(EventLogUnavailableError) as info:
        await open_pg(wrong)
    assert "not-the-password" not in str(info.value)
    assert "password authentication failed" in str(info.value)
    bad = postgres_database.replace("postgresql://", "postgresql://", 1) + "?no_such_option=1"
    with pytest.raises(EventLogArgumentError) as argument:
        await open_pg(bad)
    assert postgres_server.password not in str(argument.value)


def test_mask_password() -> None:
    assert (
        mask_password("postgresql://u:s3cret@h:5432/db?sslmode=require")
        == "postgresql://u:***@h:5432/db?sslmode=require"
    )
    assert mask_password("postgresql://h/db?user=u&password=s3cret") == "postgresql://h/db?user=u&password=***"
    assert mask_password("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_an_unreachable_server_is_unavailable() -> None:
    with pytest.raises(EventLogUnavailableError, match="cannot open"):
        await open_event_log("postgresql://nexus:pw@127.0.0.1:1/nexus?connect_timeout=2")


def test_without_server_binaries_the_setup_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reason the PostgreSQL tests and bench rows are skipped with, where no server can be had.
    from nexus.testing import _postgres

    monkeypatch.setattr(_postgres, "_binaries", lambda: None)
    with pytest.raises(PostgresUnavailable, match="no PostgreSQL server binaries"):
        _postgres.find_binaries(install=False)
    # Not root: Debian's package cannot be installed, and the message says how to get it.
    monkeypatch.setattr(_postgres.os, "geteuid", lambda: 1000)
    with pytest.raises(PostgresUnavailable, match="apt-get install postgresql"):
        _postgres.find_binaries(install=True)
