"""Event log (SQLite and PostgreSQL adapters): append throughput, group commit, and replay.

The peer is the ``eventsourcing`` library (its SQLite application recorder with its ``Mapper``
and ``JSONTranscoder``), measured in the same run on the same workload as Nexus: domain event
objects in, domain event objects out. Nexus appends ``CloudEvent`` objects and replays them
decoded into ``CloudEvent`` objects; the peer appends ``DomainEvent`` objects carrying the same
payload (the mapper encodes each into a ``StoredEvent`` and ``insert_events`` writes them) and
replays ``select_notifications`` pages mapped back into domain events. Its bare recorder
(pre-encoded bodies in, undecoded rows out) is reported in extra rows for transparency.

Append rows note where the CPU went, per event, measured in the run: the log's writer
thread (sealing, SQLite, commit), its inserter thread (the INSERT statements of long appends,
run while the writer seals the next chunk) and the rest of the process (callers, event
loop). When the wall time per event is close to the CPU sum, the run got about one core:
the writer and the inserter only overlap when a second core is free, which a shared machine
rarely gives.

PostgreSQL rows run the same workloads against a server started for the run from the
machine's binaries (``nexus.testing._postgres``, fsync on, on loopback), beside the
``eventsourcing`` library's PostgreSQL application recorder (same Mapper and transcoder) on
another database of the same server. Where no server can be started, those rows are replaced
by one row saying why.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)

from bench._harness import Context, Row, median_rate, target_row
from nexus.eventlog.postgres import PostgresEventLog
from nexus.eventlog.sqlite import SqliteEventLog
from nexus.proto import CloudEvent, encode_event, new_event, parse_rfc3339
from nexus.testing._postgres import PostgresServer, PostgresUnavailable

SUITE = "eventlog"
_NOTE = "about 400 bytes of event JSON"
_PEER_NOTE = "; peer: DomainEvent objects through its Mapper + JSONTranscoder into insert_events"


def _events(count: int) -> list[CloudEvent]:
    # About 400 bytes once encoded as the caller hands it over (the log adds ~250 of its own).
    return [
        new_event(
            "nexus.bench.order.placed",
            {
                "order": i,
                "customer": f"customer-{i % 1000:05d}",
                "lines": [{"sku": "sku-1", "qty": 2}],
                "note": "x" * 60,
            },
            source="nexus/bench",
            correlationid=str(uuid.uuid4()),
        )
        for i in range(count)
    ]


def _peer(ratio_of: float, peer: float) -> str:
    return f"eventsourcing {peer:,.0f} (x{ratio_of / peer:.1f})"


class OrderPlaced(DomainEvent):
    """The peer's domain event: the same payload as the CloudEvents Nexus appends."""

    source: str
    correlation_id: uuid.UUID
    data: dict[str, Any]


def _domain_events(events: list[CloudEvent], streams: list[tuple[uuid.UUID, int]]) -> list[OrderPlaced]:
    """``events`` as the peer's domain events, the i-th in aggregate ``streams[i][0]`` at version ``streams[i][1]``."""
    return [
        OrderPlaced(
            originator_id=originator,
            originator_version=version,
            timestamp=parse_rfc3339(e.time),
            source=e.source,
            correlation_id=uuid.UUID(e.correlationid),
            data=e.data,
        )
        for e, (originator, version) in zip(events, streams, strict=True)
    ]


def _in_batches(count: int, batch: int) -> list[tuple[uuid.UUID, int]]:
    """One new aggregate per batch, versions 1..batch (as Nexus gets one new stream per batch)."""
    out: list[tuple[uuid.UUID, int]] = []
    for start in range(0, count, batch):
        originator = uuid.uuid4()
        out += [(originator, v) for v in range(1, min(batch, count - start) + 1)]
    return out


class _Peer:
    """eventsourcing's SQLite application recorder on its own file, with its Mapper and JSONTranscoder."""

    def __init__(self, path: Path) -> None:
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        self.datastore: Any = SQLiteDatastore(str(path), pool_size=20, max_overflow=20)
        self.recorder: Any = SQLiteApplicationRecorder(self.datastore)
        self.recorder.create_table()
        self.mapper = _mapper()

    def append(self, events: list[OrderPlaced]) -> None:
        """Domain events in: mapped to StoredEvents (JSON-encoded), then inserted in one transaction."""
        self.recorder.insert_events([self.mapper.to_stored_event(e) for e in events])

    def insert_raw(self, bodies: list[bytes]) -> None:
        """The bare recorder: bodies encoded beforehand, inserted as StoredEvents of one new aggregate."""
        originator = uuid.uuid4()
        self.recorder.insert_events(
            [
                StoredEvent(originator_id=originator, originator_version=v, topic="nexus.bench:OrderPlaced", state=b)
                for v, b in enumerate(bodies, 1)
            ]
        )

    def replay(self, page: int = 5000, *, decode: bool = True) -> int:
        """Notification pages from the start; each mapped back into domain events unless ``decode`` is off."""
        to_domain_event = self.mapper.to_domain_event
        count, start = 0, 1
        while True:
            rows = self.recorder.select_notifications(start, page)
            if not rows:
                return count
            if decode:
                events = [to_domain_event(n) for n in rows]
                count += len(events)
            else:
                count += len(rows)
            start = rows[-1].id + 1

    def close(self) -> None:
        self.datastore.close()


def _mapper() -> Mapper[uuid.UUID]:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DatetimeAsISO(), DecimalAsStr()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


class _PostgresPeer(_Peer):
    """eventsourcing's PostgreSQL application recorder on its own database, same Mapper and transcoder."""

    def __init__(self, server: PostgresServer, url: str) -> None:
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

        self.datastore = PostgresDatastore(
            dbname=url.rsplit("/", 1)[1],
            host="127.0.0.1",
            port=server.port,
            user="nexus",
            password=server.password,
            pool_size=16,
            max_overflow=4,
        )
        self.recorder = PostgresApplicationRecorder(self.datastore)
        self.recorder.create_table()
        self.mapper = _mapper()


class _CpuSplit:
    """Where the CPU of a measured workload went, per event: the log's writer and inserter
    threads (their own counters) and the rest of the process (callers, event loop)."""

    def __init__(self, log: SqliteEventLog) -> None:
        self.log = log
        self.wall = time.perf_counter()
        self.process = time.process_time()
        self.writer = log.writer_cpu_seconds
        self.inserter = log.inserter_cpu_seconds

    def note(self, events: int) -> str:
        us = 1e6 / events
        wall = (time.perf_counter() - self.wall) * us
        process = (time.process_time() - self.process) * us
        writer = (self.log.writer_cpu_seconds - self.writer) * us
        inserter = (self.log.inserter_cpu_seconds - self.inserter) * us
        return (
            f"per event: wall {wall:.1f} µs, CPU {process:.1f} µs = writer thread {writer:.1f}"
            f" + inserter {inserter:.1f} + callers/event loop {process - writer - inserter:.1f}"
        )


async def _appends(ctx: Context, synchronous: str) -> dict[str, Any]:
    rates: dict[str, Any] = {}
    log = await SqliteEventLog.open(f"sqlite:///{ctx.workdir / f'append-{synchronous}.db'}?synchronous={synchronous}")
    streams = itertools.count()
    try:
        for batch in (1, 100, 1000):
            total = ctx.scale({1: 3000, 100: 50_000, 1000: 200_000}[batch], {1: 300, 100: 5000, 1000: 20_000}[batch])

            # Built before the clock starts: the figure is the log's, not new_event's.
            prepared = [_events(total) for _ in range(ctx.repeats)]

            async def work(batch: int = batch, total: int = total, prepared: list[list[CloudEvent]] = prepared) -> int:
                events = prepared.pop()
                for start in range(0, total, batch):
                    await log.append(f"order-{next(streams)}", events[start : start + batch])
                return total

            split = _CpuSplit(log)
            rates[f"batch={batch}"] = await median_rate(work, ctx.repeats)
            rates[f"split batch={batch}"] = split.note(total * ctx.repeats)

        per_writer = ctx.scale(2000, 200)

        prepared = [_events(16 * per_writer) for _ in range(ctx.repeats)]

        async def concurrent() -> int:
            events = prepared.pop()

            async def writer(n: int) -> None:
                stream = f"writer-{next(streams)}"
                for event in events[n * per_writer : (n + 1) * per_writer]:
                    await log.append(stream, [event])

            await asyncio.gather(*(writer(n) for n in range(16)))
            return 16 * per_writer

        before = (log.transactions, log.appends)
        split = _CpuSplit(log)
        rates["concurrent"] = await median_rate(concurrent, ctx.repeats)
        rates["split concurrent"] = split.note(16 * per_writer * ctx.repeats)
        rates["group"] = (log.appends - before[1]) / max(1, log.transactions - before[0])
    finally:
        await log.close()
    return rates


async def _peer_appends(ctx: Context, peer: _Peer | None = None, *, raw: bool = True) -> dict[str, float]:
    peer = _Peer(ctx.workdir / "peer-append.db") if peer is None else peer
    rates: dict[str, float] = {}
    try:
        for batch in (1, 100, 1000):
            total = ctx.scale({1: 3000, 100: 50_000, 1000: 200_000}[batch], {1: 300, 100: 5000, 1000: 20_000}[batch])

            # Domain events built before the clock starts, as Nexus's CloudEvents are.
            per_run = [_domain_events(_events(total), _in_batches(total, batch)) for _ in range(ctx.repeats)]

            async def work(batch: int = batch, total: int = total, runs: list[list[OrderPlaced]] = per_run) -> int:
                events = runs.pop()

                def run() -> None:
                    for start in range(0, total, batch):
                        peer.append(events[start : start + batch])

                await asyncio.to_thread(run)
                return total

            rates[f"batch={batch}"] = await median_rate(work, ctx.repeats)

            if batch == 1000 and raw:
                bodies_per_run = [[encode_event(e) for e in _events(total)] for _ in range(ctx.repeats)]

                async def raw(total: int = total, runs: list[list[bytes]] = bodies_per_run) -> int:
                    bodies = runs.pop()

                    def run() -> None:
                        for start in range(0, total, 1000):
                            peer.insert_raw(bodies[start : start + 1000])

                    await asyncio.to_thread(run)
                    return total

                rates["raw batch=1000"] = await median_rate(raw, ctx.repeats)

        per_writer = ctx.scale(2000, 200)

        def writers_events() -> list[OrderPlaced]:
            streams = [(uuid.uuid4(), 0) for _ in range(16)]
            placement = [(streams[n][0], v) for n in range(16) for v in range(1, per_writer + 1)]
            return _domain_events(_events(16 * per_writer), placement)

        prepared = [writers_events() for _ in range(ctx.repeats)]

        async def concurrent() -> int:
            events = prepared.pop()

            def writer(n: int) -> None:
                for event in events[n * per_writer : (n + 1) * per_writer]:
                    peer.append([event])

            await asyncio.gather(*(asyncio.to_thread(writer, n) for n in range(16)))
            return 16 * per_writer

        rates["concurrent"] = await median_rate(concurrent, ctx.repeats)
    finally:
        peer.close()
    return rates


async def _replay(ctx: Context, total: int) -> tuple[float, float, float]:
    """Replay rates: Nexus into CloudEvents, the peer into domain events, the peer's bare rows."""
    log = await SqliteEventLog.open(f"sqlite:///{ctx.workdir / 'replay.db'}?synchronous=NORMAL")
    peer = _Peer(ctx.workdir / "peer-replay.db")
    try:
        template = _events(1000)
        for start in range(0, total, 1000):
            # Fresh ids per batch: the log would rightly treat the same ids as a retry.
            fresh = [
                CloudEvent(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "id": str(uuid.uuid4())})
                for e in template
            ]
            await log.append(f"order-{start}", fresh)
            await asyncio.to_thread(peer.append, _domain_events(fresh, _in_batches(len(fresh), len(fresh))))

        async def ours() -> int:
            count = 0
            async for batch in log.iter_all(0, batch_size=5000):
                count += len(batch)
            assert count == total, count
            return count

        async def theirs() -> int:
            return await asyncio.to_thread(peer.replay)

        async def theirs_raw() -> int:
            return await asyncio.to_thread(peer.replay, decode=False)

        return (
            await median_rate(ours, ctx.repeats),
            await median_rate(theirs, ctx.repeats),
            await median_rate(theirs_raw, ctx.repeats),
        )
    finally:
        await log.close()
        peer.close()


async def _postgres_appends(ctx: Context, url: str) -> dict[str, Any]:
    """The SQLite workloads (one stream per batch; 16 concurrent single-event appenders) on PostgreSQL."""
    rates: dict[str, Any] = {}
    log = await PostgresEventLog.open(url)
    streams = itertools.count()
    try:
        for batch in (1, 100, 1000):
            total = ctx.scale({1: 3000, 100: 50_000, 1000: 200_000}[batch], {1: 300, 100: 5000, 1000: 20_000}[batch])
            prepared = [_events(total) for _ in range(ctx.repeats)]

            async def work(batch: int = batch, total: int = total, prepared: list[list[CloudEvent]] = prepared) -> int:
                events = prepared.pop()
                for start in range(0, total, batch):
                    await log.append(f"order-{next(streams)}", events[start : start + batch])
                return total

            cpu = time.process_time()
            rates[f"batch={batch}"] = await median_rate(work, ctx.repeats)
            rates[f"cpu batch={batch}"] = (time.process_time() - cpu) * 1e6 / (total * ctx.repeats)

        per_writer = ctx.scale(2000, 200)
        prepared = [_events(16 * per_writer) for _ in range(ctx.repeats)]

        async def concurrent() -> int:
            events = prepared.pop()

            async def writer(n: int) -> None:
                stream = f"writer-{next(streams)}"
                for event in events[n * per_writer : (n + 1) * per_writer]:
                    await log.append(stream, [event])

            await asyncio.gather(*(writer(n) for n in range(16)))
            return 16 * per_writer

        before = (log.transactions, log.appends)
        cpu = time.process_time()
        rates["concurrent"] = await median_rate(concurrent, ctx.repeats)
        rates["cpu concurrent"] = (time.process_time() - cpu) * 1e6 / (16 * per_writer * ctx.repeats)
        rates["group"] = (log.appends - before[1]) / max(1, log.transactions - before[0])
    finally:
        await log.close()
    return rates


async def _postgres_replay(ctx: Context, server: PostgresServer, total: int) -> tuple[float, float]:
    """Replay rates on PostgreSQL: Nexus into CloudEvents, the peer into domain events."""
    log = await PostgresEventLog.open(server.create_database())
    peer = _PostgresPeer(server, server.create_database())
    try:
        template = _events(1000)
        for start in range(0, total, 1000):
            fresh = [
                CloudEvent(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "id": str(uuid.uuid4())})
                for e in template
            ]
            await log.append(f"order-{start}", fresh)
            await asyncio.to_thread(peer.append, _domain_events(fresh, _in_batches(len(fresh), len(fresh))))

        async def ours() -> int:
            count = 0
            async for batch in log.iter_all(0, batch_size=5000):
                count += len(batch)
            assert count == total, count
            return count

        async def theirs() -> int:
            return await asyncio.to_thread(peer.replay)

        return await median_rate(ours, ctx.repeats), await median_rate(theirs, ctx.repeats)
    finally:
        await log.close()
        peer.close()


_PG_NOTE = "PostgreSQL on loopback, fsync on, one writer connection; about 400 bytes of event JSON"
_PG_PEER_NOTE = "; peer: eventsourcing's PostgreSQL application recorder, DomainEvents through its Mapper"


async def _postgres_rows(ctx: Context) -> list[Row]:
    """The PostgreSQL rows, or one row saying why there are none."""
    try:
        server = await asyncio.to_thread(PostgresServer, durable=True)
    except PostgresUnavailable as exc:
        return [Row(SUITE, "PostgreSQL rows skipped", float("nan"), "", note=f"no PostgreSQL server: {exc}")]
    try:
        ours = await _postgres_appends(ctx, server.create_database())
        peer = await _peer_appends(ctx, _PostgresPeer(server, server.create_database()), raw=False)
        rows: list[Row] = []
        for batch in (1, 100, 1000):
            key = f"batch={batch}"
            rows.append(
                target_row(
                    SUITE,
                    f"postgres append {key}",
                    ours[key],
                    "events/s",
                    peer=_peer(ours[key], peer[key]),
                    note=f"{_PG_NOTE}; CPU of this process {ours['cpu ' + key]:.1f} µs per event{_PG_PEER_NOTE}",
                )
            )
        rows.append(
            target_row(
                SUITE,
                "postgres append 16 concurrent single-event appenders",
                ours["concurrent"],
                "events/s",
                peer=_peer(ours["concurrent"], peer["concurrent"]),
                note=(
                    f"group commit: {ours['group']:.1f} appends per transaction; CPU of this process "
                    f"{ours['cpu concurrent']:.1f} µs per event{_PG_PEER_NOTE} (16 threads, pool of 16)"
                ),
            )
        )
        total = ctx.scale(200_000, 20_000)
        ours_replay, peer_replay = await _postgres_replay(ctx, server, total)
        rows.append(
            target_row(
                SUITE,
                f"postgres replay iter_all from 0 over {total:,} events into envelopes",
                ours_replay,
                "events/s",
                peer=_peer(ours_replay, peer_replay),
                note="CloudEvent objects out; peer: select_notifications pages mapped into domain events",
            )
        )
        return rows
    finally:
        await asyncio.to_thread(server.stop)


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    peer = await _peer_appends(ctx)
    for synchronous in ("FULL", "NORMAL"):
        ours = await _appends(ctx, synchronous)
        full = synchronous == "FULL"
        for batch in (1, 100, 1000):
            key = f"batch={batch}"
            rows.append(
                target_row(
                    SUITE,
                    f"append {key} sync={synchronous}",
                    ours[key],
                    "events/s",
                    at_least=100_000 if full and batch == 1000 else None,
                    peer=_peer(ours[key], peer[key]),
                    note=f"{_NOTE}; {ours['split ' + key]}{_PEER_NOTE}",
                )
            )
            if full and batch == 1000:
                rows.append(
                    target_row(
                        SUITE,
                        "peer: eventsourcing bare recorder, insert_events batch=1000 (bodies encoded beforehand)",
                        peer["raw batch=1000"],
                        "events/s",
                        note="for transparency: no Mapper, not the compared workload",
                    )
                )
        rows.append(
            target_row(
                SUITE,
                f"append 16 concurrent single-event appenders sync={synchronous}",
                ours["concurrent"],
                "events/s",
                at_least=20_000 if full else None,
                peer=_peer(ours["concurrent"], peer["concurrent"]),
                note=(
                    f"group commit: {ours['group']:.1f} appends per transaction; {ours['split concurrent']}{_PEER_NOTE}"
                ),
            )
        )
        if full:
            rows.append(
                target_row(
                    SUITE,
                    "append batch=1000 sync=FULL, ratio to eventsourcing",
                    ours["batch=1000"] / peer["batch=1000"],
                    "x",
                    at_least=10,
                )
            )
            rows.append(
                target_row(
                    SUITE,
                    "append 16 concurrent sync=FULL, ratio to eventsourcing",
                    ours["concurrent"] / peer["concurrent"],
                    "x",
                    at_least=10,
                )
            )
    total = ctx.scale(1_000_000, 50_000)
    ours_replay, peer_replay, peer_raw = await _replay(ctx, total)
    rows.append(
        target_row(
            SUITE,
            f"replay iter_all from 0 over {total:,} events into envelopes",
            ours_replay,
            "events/s",
            at_least=250_000,
            peer=_peer(ours_replay, peer_replay),
            note="CloudEvent objects out; peer: select_notifications pages mapped into domain events",
        )
    )
    rows.append(
        target_row(
            SUITE,
            f"peer: eventsourcing bare recorder, select_notifications over {total:,} events (rows, not decoded)",
            peer_raw,
            "events/s",
            note="for transparency: no Mapper, not the compared workload",
        )
    )
    rows.append(target_row(SUITE, "replay, ratio to eventsourcing", ours_replay / peer_replay, "x", at_least=7))
    rows += await _postgres_rows(ctx)
    return rows
