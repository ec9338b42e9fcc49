"""The Raw contract on the PostgreSQL backend, against a real server started for the session, and
what only it has: chunked blobs, racing stores holding a key's row, reads racing overwrites,
the URL forms and the password kept out of sight.

The server comes from ``nexus.testing._postgres`` (the machine's PostgreSQL binaries, installed
from Debian's package where missing); where none can be started, every test here is skipped
with the reason. Each test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from test_raw_contract import StoreIfAbsentContract

from nexus.eventlog import open_event_log
from nexus.raw import RawBackend, RawKeyError, RawUnavailableError, open_raw
from nexus.raw.postgres import CHUNK_BYTES, SCHEMA_VERSION, PostgresRaw
from nexus.testing import RawContract, evs
from nexus.testing._postgres import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture
async def raw(postgres_database: str) -> AsyncIterator[PostgresRaw]:
    store = await open_pg(postgres_database)
    try:
        yield store
    finally:
        await store.close()


async def open_pg(url: str) -> PostgresRaw:
    store = await open_raw(url)
    assert isinstance(store, PostgresRaw)
    return store


class TestPostgresRaw(StoreIfAbsentContract, RawContract):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_database: str) -> None:
        self.url = postgres_database

    async def make_raw(self, tmp_path: Path) -> RawBackend:
        return await open_pg(self.url)


def blob(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ from chunk to chunk (a misplaced chunk shows)."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 32
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += counter.to_bytes(8, "big") + block
        counter += 1
    return bytes(out[:size])


def chunk_rows(url: str, key: str | None = None) -> list[tuple[str, int, int]]:
    with psycopg.connect(url) as con:
        rows = con.execute(
            "SELECT key, revision, seq FROM raw_chunks WHERE %s::text IS NULL OR key = %s ORDER BY 1, 2, 3", [key, key]
        ).fetchall()
    return [(str(k), int(r), int(s)) for k, r, s in rows]


async def test_a_large_blob_is_chunked_and_its_chunks_follow_its_row(raw: PostgresRaw, postgres_database: str) -> None:
    content = blob(3 * CHUNK_BYTES + 12345)
    stat = await raw.store("big/one", content, "application/x-big")
    assert (stat.size, stat.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    assert await raw.retrieve("big/one") == content
    again = await raw.stat("big/one")
    assert (again.size, again.sha256, again.content_type) == (stat.size, stat.sha256, "application/x-big")
    rows = chunk_rows(postgres_database, "big/one")
    assert [seq for _, _, seq in rows] == [0, 1, 2, 3] and len({rev for _, rev, _ in rows}) == 1
    # Exactly one chunk: still in the row. One byte more: two chunks.
    await raw.store("edge/one", blob(CHUNK_BYTES))
    await raw.store("edge/two", blob(CHUNK_BYTES + 1))
    assert chunk_rows(postgres_database, "edge/one") == [] and len(chunk_rows(postgres_database, "edge/two")) == 2
    assert await raw.retrieve("edge/two") == blob(CHUNK_BYTES + 1)
    # Replaced by a small blob, by another large one, deleted: no chunk of an old revision stays.
    await raw.store("big/one", b"small now")
    assert chunk_rows(postgres_database, "big/one") == [] and await raw.retrieve("big/one") == b"small now"
    await raw.store("big/one", blob(2 * CHUNK_BYTES, 1))
    await raw.store("big/one", blob(2 * CHUNK_BYTES + 1, 2))
    assert len(chunk_rows(postgres_database, "big/one")) == 3 and await raw.retrieve("big/one") == blob(
        2 * CHUNK_BYTES + 1, 2
    )
    await raw.delete("big/one")
    await raw.delete("edge/two")
    assert chunk_rows(postgres_database) == []
    assert await raw.store_if_absent("big/two", blob(CHUNK_BYTES + 5)) is not None
    assert await raw.store_if_absent("big/two", blob(CHUNK_BYTES + 5, 9)) is None
    assert await raw.retrieve("big/two") == blob(CHUNK_BYTES + 5)


async def test_racing_large_stores_leave_one_whole_revision(raw: PostgresRaw, postgres_database: str) -> None:
    contents = [blob(CHUNK_BYTES * 2 + i * 1000, i) for i in range(4)]
    await raw.store("race/big", blob(10, 99))
    reads = [raw.retrieve("race/big") for _ in range(6)]
    results = await asyncio.gather(*(raw.store("race/big", c) for c in contents), *reads)
    assert all(read in [blob(10, 99), *contents] for read in results[len(contents) :])
    final = await raw.retrieve("race/big")
    assert final in contents
    assert (await raw.stat("race/big")).sha256 == hashlib.sha256(final).hexdigest()
    # The chunks of the revision the row names, and no others.
    assert len(chunk_rows(postgres_database, "race/big")) == 3


async def test_a_read_racing_an_overwrite_returns_the_old_content_whole(
    raw: PostgresRaw, postgres_database: str
) -> None:
    old, new = blob(3 * CHUNK_BYTES, 1), blob(3 * CHUNK_BYTES, 2)
    await raw.store("k", old)
    # Another connection reads the chunks half-way by the same single statement, the overwrite
    # commits (deleting the old chunks), then the read goes on: its snapshot still has them.
    async with await psycopg.AsyncConnection.connect(postgres_database) as reader:
        async with reader.transaction():
            cursor = reader.cursor(name="half", binary=True)
            from nexus.raw import postgres as module

            await cursor.execute(module._READ_CHUNKS, ["k"])
            first = await cursor.fetchone()
            await raw.store("k", new)
            assert chunk_rows(postgres_database, "k") and await raw.retrieve("k") == new
            rest = await cursor.fetchall()
            await cursor.close()
    assert first is not None
    assert b"".join(bytes(row[3]) for row in [first, *rest]) == old


async def test_a_store_waiting_for_an_open_large_store_leaves_no_orphan_chunk(
    raw: PostgresRaw, postgres_database: str
) -> None:
    # A large store's transaction, run by hand and held open: it holds the key's row and has
    # written its chunks, uncommitted.
    async with await psycopg.AsyncConnection.connect(postgres_database) as other:
        await other.execute(
            "INSERT INTO raw_blobs (key, revision, size, sha256, content_type, created, chunks, data) "
            "VALUES ('held', nextval('raw_revisions'), 4, 'x', 'text/plain', 0, 2, NULL)"
        )
        await other.execute(
            "INSERT INTO raw_chunks SELECT 'held', revision, s, 'ab' FROM raw_blobs, generate_series(0, 1) AS s "
            "WHERE key = 'held'"
        )
        small = asyncio.ensure_future(raw.store("held", b"small"))
        await asyncio.sleep(0.5)
        assert not small.done()  # it waits for the key's row
        await other.commit()
        await asyncio.wait_for(small, 10)
    # The small store replaced a revision committed after its statement began: the trigger's own
    # snapshot saw that revision's chunks and deleted them.
    assert await raw.retrieve("held") == b"small"
    assert chunk_rows(postgres_database) == []


async def test_two_stores_on_one_database_and_the_event_log_beside_them(postgres_database: str) -> None:
    first, second = await open_pg(postgres_database), await open_pg(postgres_database)
    log = await open_event_log(postgres_database)
    try:
        await first.store("shared/k", b"from the first")
        assert await second.retrieve("shared/k") == b"from the first"
        await asyncio.gather(
            *(store.store("shared/r", blob(CHUNK_BYTES + 1 + i, i)) for i, store in enumerate([first, second]))
        )
        assert await first.retrieve("shared/r") == await second.retrieve("shared/r")
        assert len(chunk_rows(postgres_database, "shared/r")) == 2
        await log.append("s", evs(3))
        assert await log.head() == 3 and await second.list_all("shared/") == ["shared/k", "shared/r"]
    finally:
        await log.close()
        await first.close()
        await second.close()


async def test_reopening_keeps_the_blobs_and_a_newer_layout_is_refused(postgres_database: str) -> None:
    store = await open_pg(postgres_database)
    await store.store("kept", b"1", "text/plain")
    await store.close()
    store = await open_pg(postgres_database)
    assert await store.retrieve("kept") == b"1" and (await store.stat("kept")).content_type == "text/plain"
    await store.close()
    with psycopg.connect(postgres_database, autocommit=True) as con:
        con.execute("INSERT INTO raw_schema (version) VALUES (%s)", [SCHEMA_VERSION + 1])
    with pytest.raises(RawUnavailableError, match=f"Raw schema version {SCHEMA_VERSION + 1}"):
        await open_pg(postgres_database)


async def test_list_escapes_like_patterns(raw: PostgresRaw) -> None:
    for key in ("a_b/1", "axb/2", "a%c/3", "azc/4", "a\u00e9/5", "b"):
        await raw.store(key, b"x")
    assert await raw.list_all("a_") == ["a_b/1"]
    assert await raw.list_all("a%") == ["a%c/3"]
    # Code point order, as every backend lists keys.
    assert await raw.list_all("a") == ["a%c/3", "a_b/1", "axb/2", "azc/4", "a\u00e9/5"]
    page = await raw.list("", limit=2)
    assert page.keys == ["a%c/3", "a_b/1"] and page.cursor == "a_b/1"
    assert (await raw.list("", "azc/4", limit=5)).keys == ["a\u00e9/5", "b"]


async def test_bad_content_type_and_closed_store(raw: PostgresRaw) -> None:
    with pytest.raises(RawKeyError, match="content type"):
        await raw.store("k", b"x", "text/\x00plain")
    await raw.close()
    with pytest.raises(RawUnavailableError, match="closed"):
        await raw.retrieve("k")


async def test_urls_and_the_password_kept_out_of_sight(postgres_server: PostgresServer) -> None:
    raw = await open_pg(postgres_server.url("postgres").replace("postgresql://", "postgres://") + "?pool_size=2")
    try:
        assert postgres_server.password not in raw.url and ":***@" in raw.url
        assert raw.options.pool_size == 2
    finally:
        await raw.close()
    for bad in ("?pool_size=0", "?pool_size=lots"):
        with pytest.raises(RawKeyError, match="pool_size"):
            await open_raw(postgres_server.url("postgres") + bad)
    wrong = postgres_server.url("postgres").replace(postgres_server.password, "not-the-password")
    with pytest.raises(RawUnavailableError) as caught:
        await open_raw(wrong)
    assert "not-the-password" not in str(caught.value) and "***" in str(caught.value)
    closed_port = postgres_server.url("postgres").replace(f":{postgres_server.port}/", ":1/") + "?connect_timeout=2"
    with pytest.raises(RawUnavailableError, match="cannot open the PostgreSQL Raw store"):
        await open_raw(closed_port)


async def test_missing_chunks_are_damage_not_a_retry_forever(raw: PostgresRaw, postgres_database: str) -> None:
    await raw.store("k", blob(2 * CHUNK_BYTES + 1))
    with psycopg.connect(postgres_database, autocommit=True) as con:
        con.execute("DELETE FROM raw_chunks WHERE key = 'k' AND seq = 1")
    with pytest.raises(RawUnavailableError, match="missing chunk 1"):
        await raw.retrieve("k")
    with psycopg.connect(postgres_database, autocommit=True) as con:
        con.execute("DELETE FROM raw_chunks WHERE key = 'k'")
    with pytest.raises(RawUnavailableError, match="damaged"):
        await asyncio.wait_for(raw.retrieve("k"), 10)
