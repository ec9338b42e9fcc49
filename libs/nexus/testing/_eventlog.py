"""The event log's behaviour, written once; every adapter's test module subclasses it.

Part of ``nexus.testing`` (needs the dev extras: pytest and pytest-asyncio in auto mode).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nexus.eventlog import (
    ANY,
    GENESIS_HASH,
    NO_STREAM,
    STREAM_EXISTS,
    ConcurrencyError,
    DuplicateEventError,
    EventLog,
    EventLogArgumentError,
    EventLogClosedError,
    EventTooLargeError,
    chain,
    event_hash,
)
from nexus.proto import CloudEvent, encode_event, new_event


def ev(type_: str = "nexus.test.happened", **data: Any) -> CloudEvent:
    return new_event(type_, data or {"n": 1}, source="nexus/test")


def evs(count: int, type_: str = "nexus.test.happened") -> list[CloudEvent]:
    return [new_event(type_, {"n": i}, source="nexus/test") for i in range(count)]


async def take(iterator: AsyncIterator[CloudEvent], count: int, within: float = 10.0) -> list[CloudEvent]:
    out: list[CloudEvent] = []
    async with asyncio.timeout(within):
        async for event in iterator:
            out.append(event)
            if len(out) == count:
                break
    return out


def _closing(tail: AsyncIterator[CloudEvent]) -> contextlib.aclosing[AsyncGenerator[CloudEvent, None]]:
    """Close a subscription when the test stops reading it.

    The port types ``subscribe`` as an AsyncIterator; the suite also requires that it can be
    closed (an async generator), since a reader that stops must release what it holds.
    """
    assert isinstance(tail, AsyncGenerator), f"subscribe() returned {type(tail).__name__}, not an async generator"
    return contextlib.aclosing(tail)


class InjectedFault(Exception):
    """Raised by a test in the middle of sealing a batch."""


class EventLogContract(abc.ABC):
    """The contract of ``nexus.eventlog.EventLog``: subclass it per adapter as ``Test...`` and
    implement ``make_log``; pytest then runs every case against that adapter.

    The adapter may add its own cases to the subclass and use the ``log`` fixture (a fresh log
    from ``make_log``, closed after the test).
    """

    @abc.abstractmethod
    async def make_log(self, tmp_path: Path) -> EventLog:
        """A new, empty log (skip the test when the backend cannot be reached)."""

    def record_subscription_reads(self, log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int] | None:
        """Make ``log``'s subscriptions with ``types`` record the first position of each read
        they make, in the list returned; None (the default): the adapter does not say, and the
        case that needs it is skipped. Override it to prove that a filtered subscription moves
        past the events it looked at instead of reading them again on every wake."""
        return None

    @pytest.fixture
    async def log(self, tmp_path: Path) -> AsyncIterator[EventLog]:
        log = await self.make_log(tmp_path)
        try:
            yield log
        finally:
            await log.close()

    # ---- versions and positions ---------------------------------------------------------

    async def test_versions_are_per_stream_and_positions_global(self, log: EventLog) -> None:
        # Two streams, interleaved appends.
        a1 = await log.append("order-a", evs(2))
        b1 = await log.append("order-b", evs(1))
        a2 = await log.append("order-a", evs(3))
        assert [e.streamversion for e in a1 + a2] == [1, 2, 3, 4, 5]
        assert [e.streamversion for e in b1] == [1]
        assert [e.position for e in a1 + b1 + a2] == [1, 2, 3, 4, 5, 6]
        assert {e.streamid for e in a1 + a2} == {"order-a"}
        # What append returned is what is stored.
        assert await log.read_all() == a1 + b1 + a2
        assert await log.read_stream("order-a") == a1 + a2
        assert await log.head() == 6
        assert await log.stream_version("order-a") == 5
        assert await log.stream_version("order-b") == 1
        assert await log.stream_version("nobody") == 0

    async def test_empty_log(self, log: EventLog) -> None:
        assert await log.head() == 0
        assert await log.read_all() == []
        assert await log.read_stream("nothing") == []
        assert await log.get_event("no-such-id") is None
        assert [batch async for batch in log.iter_all()] == []

    async def test_append_keeps_the_callers_attributes(self, log: EventLog) -> None:
        event = new_event(
            "nexus.test.happened",
            {"nested": {"list": [1, 2.5, "x", None, True]}},
            source="nexus/test",
            subject="thing-1",
            correlationid="corr-1",
            causationid="cause-1",
        )
        [stored] = await log.append("s", [event])
        assert stored.data == event.data
        assert (stored.subject, stored.correlationid, stored.causationid) == ("thing-1", "corr-1", "cause-1")
        assert await log.get_event(event.id) == stored

    # ---- expected_version ---------------------------------------------------------------

    async def test_no_stream_and_zero_require_a_new_stream(self, log: EventLog) -> None:
        await log.append("s", evs(1), NO_STREAM)
        with pytest.raises(ConcurrencyError) as info:
            await log.append("s", evs(1), NO_STREAM)
        assert (info.value.stream_id, info.value.expected, info.value.actual) == ("s", NO_STREAM, 1)
        with pytest.raises(ConcurrencyError):
            await log.append("s", evs(1), 0)
        await log.append("t", evs(1), 0)
        assert await log.head() == 2

    async def test_exact_expected_version(self, log: EventLog) -> None:
        await log.append("s", evs(2), 0)
        await log.append("s", evs(1), 2)
        with pytest.raises(ConcurrencyError) as info:
            await log.append("s", evs(1), 2)
        assert info.value.actual == 3
        with pytest.raises(ConcurrencyError):
            await log.append("s", evs(1), 7)
        # Nothing was written by the refused appends.
        assert await log.stream_version("s") == 3
        assert await log.head() == 3

    async def test_any_and_stream_exists(self, log: EventLog) -> None:
        with pytest.raises(ConcurrencyError) as info:
            await log.append("s", evs(1), STREAM_EXISTS)
        assert info.value.actual == 0
        await log.append("s", evs(1), ANY)
        await log.append("s", evs(1), STREAM_EXISTS)
        await log.append("s", evs(1))  # ANY is the default
        assert await log.stream_version("s") == 3

    async def test_concurrent_appends_with_the_same_expected_version_one_wins(self, log: EventLog) -> None:
        await log.append("s", evs(1))
        results = await asyncio.gather(*(log.append("s", evs(2), 1) for _ in range(10)), return_exceptions=True)
        winners = [r for r in results if isinstance(r, list)]
        assert len(winners) == 1
        assert all(isinstance(r, ConcurrencyError) for r in results if not isinstance(r, list))
        assert await log.stream_version("s") == 3
        assert await log.head() == 3

    # ---- idempotency ------------------------------------------------------------------

    async def test_retry_returns_the_stored_records_and_writes_nothing(self, log: EventLog) -> None:
        batch = evs(3)
        stored = await log.append("s", batch, NO_STREAM)
        await log.append("other", evs(1))
        # The retry comes with the expected version of the first try, which no longer holds.
        again = await log.append("s", batch, NO_STREAM)
        assert again == stored
        assert await log.append("s", batch, ANY) == stored
        assert await log.head() == 4
        assert await log.stream_version("s") == 3

    async def test_same_id_with_other_content_is_a_duplicate(self, log: EventLog) -> None:
        first = ev(n=1)
        await log.append("s", [first])
        changed = msgspec.structs.replace(first, data={"n": 2})
        with pytest.raises(DuplicateEventError) as info:
            await log.append("s", [changed])
        assert info.value.event_id == first.id
        # The same event in another stream is not a retry either.
        with pytest.raises(DuplicateEventError):
            await log.append("elsewhere", [first])
        # Part of a batch stored, part new.
        with pytest.raises(DuplicateEventError):
            await log.append("s", [first, ev()])
        assert await log.head() == 1
        assert await log.stream_version("elsewhere") == 0

    # ---- reading ----------------------------------------------------------------------

    async def test_read_stream_pages(self, log: EventLog) -> None:
        stored = await log.append("s", evs(10))
        await log.append("t", evs(2))
        assert await log.read_stream("s", 1, 4) == stored[:4]
        assert await log.read_stream("s", 5, 4) == stored[4:8]
        assert await log.read_stream("s", 9) == stored[8:]
        assert await log.read_stream("s", 11) == []
        assert await log.read_stream("s", 0, 1) == stored[:1]
        assert await log.read_stream("s", 3, 0) == []

    async def test_read_all_pages_and_types(self, log: EventLog) -> None:
        a = await log.append("s", evs(3, "nexus.test.a"))
        b = await log.append("t", evs(2, "nexus.test.b"))
        c = await log.append("s", evs(3, "nexus.test.c"))
        everything = a + b + c
        assert await log.read_all(0, 3) == everything[:3]
        assert await log.read_all(4, 3) == everything[3:6]
        assert await log.read_all(7) == everything[6:]
        assert await log.read_all(9) == []
        assert await log.read_all(1, 0) == []
        assert await log.read_all(types=["nexus.test.b"]) == b
        assert await log.read_all(types=("nexus.test.a", "nexus.test.c")) == a + c
        assert await log.read_all(3, 2, types={"nexus.test.a", "nexus.test.c"}) == [a[2], c[0]]
        assert await log.read_all(types=[]) == []
        assert await log.read_all(types=["nexus.test.none"]) == []

    async def test_iter_all_batches(self, log: EventLog) -> None:
        stored = []
        for i in range(5):
            stored += await log.append(f"s{i}", evs(5))
        batches = [batch async for batch in log.iter_all(3, batch_size=7)]
        assert [len(b) for b in batches] == [7, 7, 7, 2]
        assert [e for b in batches for e in b] == stored[2:]

    async def test_get_event(self, log: EventLog) -> None:
        stored = await log.append("s", evs(3))
        for event in stored:
            assert await log.get_event(event.id) == event

    # ---- subscribe --------------------------------------------------------------------

    async def test_subscribe_from_zero_and_from_the_middle(self, log: EventLog) -> None:
        stored = await log.append("s", evs(6))
        async with _closing(log.subscribe()) as tail:
            assert await take(tail, 6) == stored
        async with _closing(log.subscribe(4)) as tail:
            assert await take(tail, 3) == stored[3:]

    async def test_subscribe_waits_for_new_events(self, log: EventLog) -> None:
        first = await log.append("s", evs(2))
        async with _closing(log.subscribe(1)) as tail:
            got = await take(tail, 2)
            # Nothing more yet: the next read waits.
            pending = asyncio.ensure_future(take(tail, 3))
            await asyncio.sleep(0.2)
            assert not pending.done()
            later = await log.append("t", evs(3))
            assert await asyncio.wait_for(pending, 10) == later
        assert got == first

    async def test_subscribe_with_concurrent_writers_sees_every_position_once_in_order(self, log: EventLog) -> None:
        writers, per_writer = 8, 50
        total = writers * per_writer

        async def writer(n: int) -> None:
            for i in range(per_writer):
                await log.append(f"writer-{n}", [ev(n=i)])

        async with _closing(log.subscribe()) as tail:
            reader = asyncio.ensure_future(take(tail, total, within=30))
            await asyncio.gather(*(writer(n) for n in range(writers)))
            got = await reader
        assert [e.position for e in got] == list(range(1, total + 1))
        assert len({e.id for e in got}) == total
        # Each writer's events arrive in its own order.
        for n in range(writers):
            mine = [e.streamversion for e in got if e.streamid == f"writer-{n}"]
            assert mine == list(range(1, per_writer + 1))

    async def test_subscribe_with_types_yields_only_those_in_position_order(self, log: EventLog) -> None:
        # More than one page of each kind (adapters read 1000 events at a time).
        for n in range(5):
            await log.append(f"s{n}", [ev(("nexus.test.a", "nexus.test.b")[i % 2], i=i) for i in range(500)])
        await log.append("t", evs(3, "nexus.test.c"))
        wanted = {"nexus.test.a", "nexus.test.c"}
        expected = await log.read_all(101, types=wanted)
        assert len(expected) == 1203
        async with _closing(log.subscribe(101, types=wanted)) as tail:
            got = await take(tail, len(expected))
            assert got == expected
            # Nothing more matches: the next read waits, past events of other types too.
            pending = asyncio.ensure_future(take(tail, 1))
            await log.append("u", evs(5, "nexus.test.b"))
            await asyncio.sleep(0.2)
            assert not pending.done()
            [later] = await log.append("u", [ev("nexus.test.c")])
            assert await asyncio.wait_for(pending, 10) == [later]
        # The same types in another collection, and an empty one, which yields nothing.
        async with _closing(log.subscribe(types=("nexus.test.c",))) as tail:
            assert await take(tail, 4) == await log.read_all(types=["nexus.test.c"])
        async with _closing(log.subscribe(types=[])) as tail:
            with pytest.raises(TimeoutError):
                await take(tail, 1, within=0.3)
        with pytest.raises(EventLogArgumentError, match="types"):
            await anext(log.subscribe(types="nexus.test.a"))

    async def test_subscribe_with_types_and_concurrent_writers_yields_each_match_once_in_order(
        self, log: EventLog
    ) -> None:
        writers, per_writer = 8, 40
        kinds = ("nexus.test.a", "nexus.test.b", "nexus.test.c", "nexus.test.b")
        wanted = {"nexus.test.a", "nexus.test.c"}

        def batch(n: int, i: int) -> list[CloudEvent]:
            kind = kinds[(n + i) % len(kinds)]
            # Some appends mix a match between two others, so a page can end inside a batch.
            return [ev(kind, i=i)] if i % 5 else [ev("nexus.test.b", i=i), ev(kind, i=i), ev("nexus.test.b", i=i)]

        plans = {n: [batch(n, i) for i in range(per_writer)] for n in range(writers)}
        matching = sum(e.type in wanted for plan in plans.values() for b in plan for e in b)

        async def writer(n: int) -> None:
            for events in plans[n]:
                await log.append(f"writer-{n}", events)

        async with _closing(log.subscribe(types=wanted)) as tail:
            reader = asyncio.ensure_future(take(tail, matching, within=30))
            await asyncio.gather(*(writer(n) for n in range(writers)))
            got = await reader
            # And nothing after them.
            with pytest.raises(TimeoutError):
                await take(tail, 1, within=0.3)
        assert got == await log.read_all(types=wanted)
        positions = [e.position or 0 for e in got]
        assert positions == sorted(set(positions))
        assert {e.type for e in got} == wanted
        for n in range(writers):
            mine = [e.id for e in got if e.streamid == f"writer-{n}"]
            assert mine == [e.id for b in plans[n] for e in b if e.type in wanted]

    async def test_a_filtered_subscription_moves_past_the_events_it_looked_at(
        self, log: EventLog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        reads = self.record_subscription_reads(log, monkeypatch)
        if reads is None:
            pytest.skip("the adapter does not record its subscriptions' reads (record_subscription_reads)")
        await log.append("s", evs(30, "nexus.test.other"))
        async with _closing(log.subscribe(types=["nexus.test.wanted"])) as tail:
            pending = asyncio.ensure_future(take(tail, 1))
            await asyncio.sleep(0.2)
            await log.append("s", evs(20, "nexus.test.other"))
            await asyncio.sleep(0.2)
            assert not pending.done()
            # The first read looked at the 30 events and found none: no later read looks at
            # them again, and once the 20 others are seen, reads start past them as well.
            assert reads[0] == 1
            assert len(reads) >= 2
            assert all(start > 30 for start in reads[1:]), reads
            assert reads[-1] == 51, reads
            [wanted] = await log.append("t", [ev("nexus.test.wanted")])
            assert await asyncio.wait_for(pending, 10) == [wanted]

    # ---- tamper evidence --------------------------------------------------------------

    async def test_hash_chain(self, log: EventLog) -> None:
        await log.append("s", evs(3))
        await log.append("t", evs(2))
        await log.append("s", evs(2))
        for stream in ("s", "t"):
            previous = GENESIS_HASH
            for event in await log.read_stream(stream):
                assert event.prevhash == previous
                assert event.hash == event_hash(event)
                previous = event.hash
        # The hash covers the position: moving an event breaks it.
        event = (await log.read_all(1, 1))[0]
        moved = msgspec.structs.replace(event, position=99)
        assert event_hash(moved) != event.hash

    # ---- atomicity and errors ---------------------------------------------------------

    async def test_a_batch_that_fails_midway_leaves_the_log_unchanged(
        self, log: EventLog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        before = await log.append("s", evs(2))
        # Sealing the third event of the next batch fails.
        calls = 0

        def failing(real: Any) -> Any:
            def seal(*args: Any, **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == 3:
                    raise InjectedFault("sealing the third event failed")
                return real(*args, **kwargs)

            return seal

        monkeypatch.setattr(chain, "seal", failing(chain.seal))
        monkeypatch.setattr(chain, "seal_encoded", failing(chain.seal_encoded))
        monkeypatch.setattr(chain, "seal_content", failing(chain.seal_content))
        batch = evs(5)
        with pytest.raises(InjectedFault):
            await log.append("s", batch, 2)
        monkeypatch.undo()
        assert calls == 3
        assert await log.head() == 2
        assert await log.stream_version("s") == 2
        assert await log.read_all() == before
        assert await log.get_event(batch[0].id) is None
        # The log carries on where it was: no gap in positions or versions, the chain intact.
        after = await log.append("s", batch, 2)
        assert [(e.position, e.streamversion) for e in after] == [(i, i) for i in range(3, 8)]
        assert after[0].prevhash == before[-1].hash

    # ---- size limit -------------------------------------------------------------------

    async def test_an_event_over_the_size_limit_is_refused_and_nothing_of_its_batch_is_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("NEXUS_MAX_EVENT_BYTES", "4096")
        log = await self.make_log(tmp_path)
        try:
            assert log.max_event_bytes == 4096
            before = await log.append("s", evs(2))
            big = ev("nexus.test.big", text="x" * 5000)
            # A short batch (encoded by the caller) and a long one (over 100 events: the SQLite
            # adapter encodes those in its writer, chunk by chunk) are both refused whole.
            for batch in ([ev(), big, ev()], [*evs(150), big, *evs(10)]):
                with pytest.raises(EventTooLargeError) as info:
                    await log.append("s", batch, 2)
                error = info.value
                assert (error.limit, error.event_type, error.stream_id, error.event_id) == (
                    4096,
                    "nexus.test.big",
                    "s",
                    big.id,
                )
                assert error.size > 5000
                for part in ("nexus.test.big", "'s'", str(error.size), "4096", "NEXUS_MAX_EVENT_BYTES"):
                    assert part in str(error)
                assert await log.head() == 2
                assert await log.get_event(batch[0].id) is None
            assert await log.read_all() == before
            # The log carries on with no gap in positions, versions or the chain.
            after = await log.append("s", evs(1), 2)
            assert (after[0].position, after[0].streamversion, after[0].prevhash) == (3, 3, before[-1].hash)
        finally:
            await log.close()

    async def test_the_size_limit_bounds_the_event_as_stored_and_relayed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("NEXUS_MAX_EVENT_BYTES", "4096")
        log = await self.make_log(tmp_path)
        try:
            accepted, refused = 0, 0
            for padding in range(3600, 4100, 20):
                event = ev(text="y" * padding)
                try:
                    [stored] = await log.append(f"stream-{padding}", [event])
                except EventTooLargeError as exc:
                    assert exc.size > 4096
                    refused += 1
                else:
                    # What the relay publishes (the event with its placement) fits the limit.
                    assert len(encode_event(stored)) <= 4096
                    accepted += 1
            assert accepted and refused
        finally:
            await log.close()

    async def test_bad_arguments(self, log: EventLog) -> None:
        with pytest.raises(EventLogArgumentError, match="stream_id"):
            await log.append("", evs(1))
        with pytest.raises(EventLogArgumentError, match="stream_id"):
            await log.append("   ", evs(1))
        with pytest.raises(EventLogArgumentError, match="at least one event"):
            await log.append("s", [])
        with pytest.raises(EventLogArgumentError, match="not a CloudEvent"):
            await log.append("s", [{"id": "x"}])  # type: ignore[list-item]  # the wrong type is the test
        with pytest.raises(EventLogArgumentError, match="JSON"):
            await log.append("s", [new_event("nexus.test.x", {"when": object()}, source="nexus/test")])
        with pytest.raises(EventLogArgumentError, match="twice"):
            event = ev()
            await log.append("s", [event, event])
        with pytest.raises(EventLogArgumentError, match="expected_version"):
            await log.append("s", evs(1), -7)
        with pytest.raises(EventLogArgumentError, match="from_position"):
            await log.read_all(-1)
        with pytest.raises(EventLogArgumentError, match="from_version"):
            await log.read_stream("s", -1)
        with pytest.raises(EventLogArgumentError, match="limit"):
            await log.read_all(0, -5)
        with pytest.raises(EventLogArgumentError, match="types"):
            await log.read_all(types="nexus.test.a")
        with pytest.raises(EventLogArgumentError, match="from_position"):
            await anext(log.subscribe(-1))
        # None of that wrote anything.
        assert await log.head() == 0

    async def test_close(self, tmp_path: Path) -> None:
        log = await self.make_log(tmp_path)
        await log.append("s", evs(1))
        tail = log.subscribe(2)
        waiting = asyncio.ensure_future(anext(tail))
        await asyncio.sleep(0.1)
        await log.close()
        # A subscriber waiting for events learns that the log is gone.
        with pytest.raises(EventLogClosedError):
            await asyncio.wait_for(waiting, 10)
        with pytest.raises(EventLogClosedError):
            await log.append("s", evs(1))
        with pytest.raises(EventLogClosedError):
            await log.read_all()
        with pytest.raises(EventLogClosedError):
            await log.head()
        await log.close()  # closing twice is harmless
