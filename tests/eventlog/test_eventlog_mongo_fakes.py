"""The MongoDB event log against a fake replica set (``tests/mongo_fake.py``): the whole
event-log contract, and the defects a reading of the adapter against PyMongo's source found.

The fake gives transactions a snapshot and buffered writes, fails a write to a document that
another transaction wrote with WriteConflict (labelled TransientTransactionError), reports a
duplicate key from ``insert_many`` as BulkWriteError, an oversized document as
DocumentTooLarge, and does not let a transaction inherit a database's concerns: all as PyMongo
and MongoDB do. ``tests/eventlog/test_eventlog_mongo.py`` runs the same contract against a real
replica set when one is reachable.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mongo_fake import CommitFault, FakeServer, FakeSession
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from nexus.eventlog import (
    ANY,
    GENESIS_HASH,
    NO_STREAM,
    AppendOutcomeUnknownError,
    ConcurrencyError,
    DuplicateEventError,
    EventLog,
    EventLogArgumentError,
    EventLogUnavailableError,
    EventTooLargeError,
    chain,
)
from nexus.eventlog.mongo import MAX_APPEND_BYTES, MAX_APPEND_EVENTS, MongoEventLog
from nexus.proto import CloudEvent
from nexus.testing import EventLogContract, ev

_URL = "mongodb://fake/nexus"


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


async def _open(server: FakeServer, **options: float) -> MongoEventLog:
    return await MongoEventLog.on_client(_URL, server.client(), "nexus", **options)  # type: ignore[arg-type]


@pytest.fixture
async def log(server: FakeServer) -> MongoEventLog:
    log = await _open(server)
    yield log  # type: ignore[misc]
    await log.close()


def _evs(count: int, **data: object) -> list[CloudEvent]:
    return [ev(n=i, **data) for i in range(count)]


class TestMongoEventLogOnFake(EventLogContract):
    """Every case of the event-log contract."""

    @pytest.fixture(autouse=True)
    def _fake(self, server: FakeServer) -> None:
        self.server = server

    async def make_log(self, tmp_path: Path) -> EventLog:
        return await _open(self.server)

    def record_subscription_reads(self, log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int] | None:
        assert isinstance(log, MongoEventLog)
        starts: list[int] = []
        real = log._scan_types

        async def scan(start: int, types: list[str]) -> tuple[list[CloudEvent], int, bool]:
            starts.append(start)
            return await real(start, types)

        monkeypatch.setattr(log, "_scan_types", scan)
        return starts


async def test_the_transaction_commits_with_majority_and_journal(server: FakeServer, log: MongoEventLog) -> None:
    # Concerns set on the database are not inherited by a transaction: they are given to it.
    await log.append("s", _evs(2))
    assert server.commits == [{"write_concern": {"w": "majority", "j": True}, "read_concern": {"level": "snapshot"}}]


async def test_concurrent_appends_share_transactions(server: FakeServer, log: MongoEventLog) -> None:
    stored = await asyncio.gather(*(log.append(f"s{i}", _evs(2)) for i in range(200)))
    # One writer commits what is queued in one transaction: far fewer commits than appends.
    assert len(server.commits) == log.transactions < 20, len(server.commits)
    assert log.appends == 200
    positions = sorted(e.position for batch in stored for e in batch)
    assert positions == list(range(1, 401))
    assert await log.head() == 400 and [e.position for e in await log.read_all()] == positions


async def test_the_counter_is_taken_last(server: FakeServer, log: MongoEventLog) -> None:
    await log.append("s", _evs(1))
    server.trace.clear()
    await log.append("s", _evs(1))
    await log.append("t", _evs(1))
    # Decided first (ids, then the stream's last event unless cached), then the counter, the
    # insert and the commit: the counter is held for the last two round trips only.
    ops = [op for op in server.trace if not op.startswith("counters.find") or "update" in op]
    assert ops == [
        "events.find",
        "counters.find_one_and_update",
        "events.insert_many",
        "admin.commitTransaction",
        "events.find",
        "events.aggregate",
        "counters.find_one_and_update",
        "events.insert_many",
        "admin.commitTransaction",
    ]


async def test_two_clients_writing_at_once_conflict_and_retry(server: FakeServer) -> None:
    one, two = await _open(server), await _open(server)
    try:
        writers, per_writer = 6, 15

        async def writer(log: MongoEventLog, n: int) -> None:
            for i in range(per_writer):
                await log.append(f"w{n % 3}", [ev(writer=n, i=i)])

        await asyncio.gather(*(writer(one if n % 2 else two, n) for n in range(writers)))
        # The two writers' transactions collided on the counter (WriteConflict) and were decided
        # again; each one's stream cache was found stale when the other had committed.
        assert one.conflicts + two.conflicts > 0
        events = await one.read_all()
        assert [e.position for e in events] == list(range(1, writers * per_writer + 1))
        for stream in ("w0", "w1", "w2"):
            mine = await one.read_stream(stream)
            assert [e.streamversion for e in mine] == list(range(1, len(mine) + 1))
            assert [e.prevhash for e in mine] == [GENESIS_HASH] + [e.hash for e in mine[:-1]]
            assert all(chain.event_hash(e) == e.hash for e in mine)
    finally:
        await one.close()
        await two.close()


async def test_a_duplicate_key_from_insert_many_is_decided_again(server: FakeServer, log: MongoEventLog) -> None:
    batch = _evs(2)
    foreign, body = chain.seal_encoded(batch[1], stream_id="other", version=1, position=1000, prevhash=GENESIS_HASH)

    async def foreign_writer(session: FakeSession | None) -> None:
        # A writer that did not take the counter stores one of the batch's ids in another
        # stream after the transaction read it as free: insert_many meets a duplicate key.
        await log._events.insert_one(
            {
                "_id": 1000,
                "stream_id": "other",
                "version": 1,
                "event_id": foreign.id,
                "type": foreign.type,
                "body": body,
            }
        )

    server.on("events.insert_many", foreign_writer)
    # PyMongo reports it as BulkWriteError; the append is decided again on the stored state.
    with pytest.raises(DuplicateEventError, match=batch[1].id):
        await log.append("s", batch)
    assert await log.stream_version("s") == 0 and await log.head() == 0


async def test_a_document_too_large_is_an_event_too_large(server: FakeServer) -> None:
    server.max_bson_size = 64 * 1024
    # Opened without asking the server its limit (as if the server's limit had shrunk since).
    log = MongoEventLog(_URL, server.client(), "nexus")
    try:
        small = ev(n=1)
        big = ev(text="x" * 100_000)
        results = await asyncio.gather(log.append("s", [small]), log.append("t", [big]), return_exceptions=True)
        # PyMongo's DocumentTooLarge (no PyMongoError) fails the append that carries it, alone.
        assert isinstance(results[1], EventTooLargeError), results[1]
        assert results[1].limit == 64 * 1024 and results[1].event_id == big.id
        assert isinstance(results[0], list) and results[0][0].position == 1
        assert await log.stream_version("t") == 0
    finally:
        await log.close()


async def test_the_servers_document_limit_bounds_an_event(server: FakeServer) -> None:
    server.max_bson_size = 64 * 1024
    log = await _open(server)
    try:
        assert log.max_event_bytes < 64 * 1024
        with pytest.raises(EventTooLargeError, match="at most"):
            await log.append("t", [ev(text="x" * 70_000)])
    finally:
        await log.close()


async def test_an_append_larger_than_a_transaction_carries_is_refused(server: FakeServer, log: MongoEventLog) -> None:
    with pytest.raises(EventLogArgumentError, match=f"at most {MAX_APPEND_EVENTS} events per append"):
        await log.append("s", _evs(MAX_APPEND_EVENTS + 1))
    heavy = [ev(text="y" * 400_000, i=i) for i in range(MAX_APPEND_BYTES // 400_000 + 1)]
    with pytest.raises(EventLogArgumentError, match=f"at most {MAX_APPEND_BYTES} bytes per append"):
        await log.append("s", heavy)
    assert server.commits == [] and await log.head() == 0
    # Within the limits, a long append is one transaction.
    assert len(await log.append("s", _evs(2000))) == 2000 and len(server.commits) == 1


async def test_an_unknown_commit_outcome_is_its_own_error(server: FakeServer) -> None:
    log = await _open(server, append_timeout_s=1.0)
    try:
        batch = _evs(2)
        # The commit is applied, then the connection drops and the primary cannot be reached
        # again before the append's deadline.
        server.commit_faults = [
            CommitFault(applied=True, error=AutoReconnect("connection reset")),
            CommitFault(applied=False, error=ServerSelectionTimeoutError("no primary available")),
            CommitFault(applied=False, error=ServerSelectionTimeoutError("no primary available")),
        ]
        async with asyncio.timeout(10):
            unknown, conflict = await asyncio.gather(
                log.append("s", batch, NO_STREAM), log.append("t", _evs(1), 5), return_exceptions=True
            )
        assert isinstance(unknown, AppendOutcomeUnknownError) and "no primary" in str(unknown), unknown
        assert isinstance(unknown, EventLogUnavailableError)  # callers that retry on "unavailable" do
        # An append of the same transaction decided without writing keeps its verdict.
        assert isinstance(conflict, ConcurrencyError), conflict
        server.commit_faults.clear()
        # Retried with the same ids (and the same expected version): it was stored, and is answered.
        again = await log.append("s", batch, NO_STREAM)
        assert [e.position for e in again] == [1, 2] and await log.head() == 2
    finally:
        await log.close()


async def test_a_commit_confirmed_on_retry_succeeds(server: FakeServer, log: MongoEventLog) -> None:
    server.commit_faults = [CommitFault(applied=False, error=AutoReconnect("connection reset"))]
    stored = await log.append("s", _evs(1))
    assert stored[0].position == 1 and await log.head() == 1


async def test_a_failure_before_the_commit_is_retried_then_unavailable_not_unknown(server: FakeServer) -> None:
    log = await _open(server, append_timeout_s=0.5)
    try:

        async def drop(session: FakeSession | None) -> None:
            raise AutoReconnect("connection reset")

        # Once: the transaction is tried again (a network error inside it is transient).
        server.on("events.insert_many", drop)
        assert (await log.append("s", _evs(1)))[0].position == 1
        # Until the deadline: nothing was committed, so the error says so, not "unknown".
        for _ in range(1000):
            server.on("events.insert_many", drop)
        with pytest.raises(EventLogUnavailableError, match="nothing was stored") as caught:
            await log.append("s", _evs(1))
        assert not isinstance(caught.value, AppendOutcomeUnknownError)
        assert await log.head() == 1
        server.hooks.clear()
        assert (await log.append("s", _evs(1)))[0].position == 2
    finally:
        await log.close()


async def test_an_append_is_bounded_by_its_timeout(server: FakeServer) -> None:
    log = await _open(server, append_timeout_s=0.5)
    try:
        # Another client's transaction holds the counter and never finishes: every attempt
        # meets a WriteConflict. The append gives up at its deadline, not after 120 s.
        blocker = server.client().start_session()
        await blocker.start_transaction()
        await log._counters.update_one({"_id": "position"}, {"$inc": {"value": 1}}, session=blocker)
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(10):
            with pytest.raises(EventLogUnavailableError, match="nothing was stored") as caught:
                await log.append("s", _evs(1))
        assert not isinstance(caught.value, AppendOutcomeUnknownError)
        assert asyncio.get_running_loop().time() - started < 2
        assert log.conflicts > 0
        await blocker.abort_transaction()
        assert (await log.append("s", _evs(1)))[0].position == 1
    finally:
        await log.close()


async def test_a_retry_queued_beside_its_original_is_answered(server: FakeServer, log: MongoEventLog) -> None:
    batch = _evs(3)
    first, second = await asyncio.gather(log.append("s", batch, ANY), log.append("s", batch, ANY))
    assert first == second and await log.head() == 3


async def test_a_stream_another_client_moved_is_not_served_from_the_cache(server: FakeServer) -> None:
    one, two = await _open(server), await _open(server)
    try:
        await one.append("x", _evs(1))
        await two.append("x", _evs(1))  # x moves behind one's back
        await one.append("y", _evs(1))  # one commits again, about another stream
        # one's cached state of x is stale: it must not place the next event at version 2.
        stored = await one.append("x", _evs(1), 2)
        assert stored[0].streamversion == 3 and stored[0].prevhash == (await one.read_stream("x"))[1].hash
    finally:
        await one.close()
        await two.close()
