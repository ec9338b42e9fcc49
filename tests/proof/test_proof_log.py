"""Log verification: every kind of tampering is found, with its position, stream and reason."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from nexus.eventlog import open_event_log
from nexus.eventlog.chain import seal
from nexus.eventlog.memory import MemoryEventLog
from nexus.proof import SEAL_STREAM, seal_log, verify_log
from nexus.proto import decode_event, encode_event, new_event


async def fill(log, streams: int = 3, per_stream: int = 4) -> None:  # type: ignore[no-untyped-def]
    # Interleave streams so their events are spread over the positions.
    for round_ in range(per_stream):
        for s in range(streams):
            await log.append(f"order-{s}", [new_event("test.order.changed", {"s": s, "n": round_}, source="test")])


async def test_an_intact_log_verifies() -> None:
    log = MemoryEventLog()
    await fill(log)
    report = await verify_log(log)
    assert report.ok and report.events == 12 and report.streams == 3
    partial = await verify_log(log, 5, 9)
    assert partial.ok and partial.events == 5


async def test_memory_log_changed_content_is_found() -> None:
    log = MemoryEventLog()
    await fill(log)
    victim = log._events[4]
    log._events[4] = msgspec.structs.replace(victim, data={"s": 1, "n": 99})
    report = await verify_log(log)
    assert not report.ok
    assert [(p.position, p.stream) for p in report.problems] == [(5, victim.streamid)]
    assert "content changed" in report.problems[0].reason


async def test_a_rebuilt_chain_is_caught_by_the_seal() -> None:
    log = MemoryEventLog()
    await fill(log, streams=1, per_stream=5)
    stored = await seal_log(log)
    assert stored is not None and stored.streamid == SEAL_STREAM and stored.data["count"] == 5
    assert (await verify_log(log)).seals_checked == 1
    # Rewrite event 3 and re-hash the rest of its stream consistently: chains and hashes are
    # all valid again, only the seal can tell.
    prevhash = log._events[1].hash
    for index in range(2, 5):
        old = log._events[index]
        data = {"s": 0, "n": 1000} if index == 2 else old.data
        forged = seal(
            msgspec.structs.replace(old, data=data),
            stream_id=old.streamid,
            version=old.streamversion,
            position=old.position,
            prevhash=prevhash,
        )
        log._events[index] = forged
        prevhash = forged.hash
    report = await verify_log(log)
    assert [p.stream for p in report.problems] == [SEAL_STREAM]
    assert "does not match" in report.problems[0].reason
    assert (await verify_log(log, 1, 3)).ok  # a range that holds no complete seal


async def test_seals_chain_their_ranges() -> None:
    log = MemoryEventLog()
    await fill(log, streams=1, per_stream=2)
    first = await seal_log(log)
    await fill(log, streams=1, per_stream=1)
    second = await seal_log(log)
    assert (first.data["from_position"], first.data["to_position"]) == (1, 2)
    assert (second.data["from_position"], second.data["to_position"]) == (3, 4)
    assert await seal_log(log, 6, 5) is None
    report = await verify_log(log)
    assert report.ok and report.seals_checked == 2


# --------------------------------------------------------------------------- SQLite, tampered directly


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    log = await open_event_log(f"sqlite:///{path}")
    await fill(log)
    await log.close()
    return path


async def verify_file(path: Path):  # type: ignore[no-untyped-def]
    log = await open_event_log(f"sqlite:///{path}")
    try:
        return await verify_log(log)
    finally:
        await log.close()


def body(con: sqlite3.Connection, position: int) -> bytes:
    return bytes(con.execute("SELECT body FROM events WHERE position = ?", (position,)).fetchone()[0])


async def test_sqlite_intact(db: Path) -> None:
    assert (await verify_file(db)).ok


async def test_sqlite_changed_byte(db: Path) -> None:
    with sqlite3.connect(db) as con:
        changed = body(con, 6).replace(b'"n":1', b'"n":7')
        assert changed != body(con, 6)
        con.execute("UPDATE events SET body = ? WHERE position = 6", (changed,))
    report = await verify_file(db)
    assert [(p.position, p.stream) for p in report.problems] == [(6, "order-2")]
    assert "content changed" in report.problems[0].reason


async def test_sqlite_deleted_event(db: Path) -> None:
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM events WHERE position = 5")
    report = await verify_file(db)
    reasons: dict[tuple[int, str], str] = {}
    for p in report.problems:
        reasons[(p.position, p.stream)] = reasons.get((p.position, p.stream), "") + p.reason + "; "
    assert "positions 5..5 are missing" in reasons[(6, "order-2")]  # the global sequence has a hole
    assert "version 3 follows version 1" in reasons[(8, "order-1")]  # and so has the stream
    assert "prevhash" in reasons[(8, "order-1")]


async def test_sqlite_inserted_event(db: Path) -> None:
    with sqlite3.connect(db) as con:
        # A forged event claiming to be order-0's second version, appended at the end.
        template = decode_event(body(con, 4))
        forged = msgspec.structs.replace(template, id="forged-1", position=13, data={"s": 0, "n": -1})
        con.execute(
            "INSERT INTO events (position, stream_id, version, event_id, type, body) "
            "VALUES (13, 'order-0', 99, ?, ?, ?)",
            (forged.id, forged.type, encode_event(forged)),
        )
    report = await verify_file(db)
    assert {p.position for p in report.problems} == {13}
    text = " ".join(p.reason for p in report.problems)
    assert "content changed" in text and "version 2 follows version 4" in text


async def test_sqlite_swapped_events(db: Path) -> None:
    # Reorder order-1's first two events (positions 2 and 5): each moves into the other's slot
    # with the slot's position, version and prevhash, keeping its own content and hash.
    with sqlite3.connect(db) as con:
        first, second = decode_event(body(con, 2)), decode_event(body(con, 5))
        moved_up = msgspec.structs.replace(second, position=2, streamversion=1, prevhash=first.prevhash)
        moved_down = msgspec.structs.replace(first, position=5, streamversion=2, prevhash=second.prevhash)
        con.execute("UPDATE events SET body = ? WHERE position = 2", (encode_event(moved_up),))
        con.execute("UPDATE events SET body = ? WHERE position = 5", (encode_event(moved_down),))
    report = await verify_file(db)
    # Both moved events fail their hash, and the chain breaks after each (8 pointed at the old 5).
    assert {(p.position, p.stream) for p in report.problems} == {(2, "order-1"), (5, "order-1"), (8, "order-1")}
    assert all("content changed" in p.reason or "prevhash" in p.reason for p in report.problems)
    assert any(p.position == 5 and "prevhash" in p.reason for p in report.problems)
