"""``postgresql://…``: Raw blobs in a PostgreSQL database, through psycopg 3's asyncio API and a pool.

For deployments that outgrow one machine: every replica of every service shares the blobs, in
the same database as the event log if wanted (the tables are ``raw_*``, the log's
``eventlog_*``). ``postgres://`` is accepted as well; the rest of the URL is libpq's, plus
``pool_size`` (connections, 4 by default), which Nexus takes out before handing the URL to libpq.

Layout, created on first open (``raw_schema`` records the layout's version):

* ``raw_blobs``: one row per key (``COLLATE "C"``: keys sort by code point, as every backend
  lists them), with its revision, size, sha256, content type, creation time and chunk count.
  A blob of at most ``CHUNK_BYTES`` (1 MiB) is held in the row itself (``chunks = 0``): one
  statement stores it, one reads it.
* ``raw_chunks``: a larger blob's content, ``CHUNK_BYTES`` per row, keyed by (key, revision,
  sequence number).

**Why rows of ``bytea`` and not large objects.** A large object (``lo_*``) lives outside the
table that names it: deleting or replacing the row leaves the object behind unless something
unlinks it (``vacuumlo``), logical replication does not carry large objects, and their
permissions are per object. Chunk rows are ordinary rows: replicated, dumped, removed with the
transaction that replaces them, and sized (1 MiB each) so neither side ever holds more than a
few chunks in flight: a store sends its chunks with ``COPY … FROM STDIN (FORMAT BINARY)``, a
read fetches them a few at a time through a server-side cursor.

**A store is one transaction, and the key's row is its lock.** A store upserts the key's row
first (``INSERT … ON CONFLICT (key) DO UPDATE``, a new revision from the ``raw_revisions``
sequence), which takes the row's lock, then writes its chunks, then commits. Two stores of one
key therefore take turns: the second waits for the first's commit, then replaces it; the key
ends up holding one of them, whole. The chunks of the revision a store replaces (or a delete
removes) are deleted by a row trigger in the same transaction; the trigger's statement runs
with a snapshot of its own (a volatile function under READ COMMITTED), so it sees chunks that
another store committed after the replacing statement began, and no chunk outlives its row.
``store_if_absent`` is ``ON CONFLICT DO NOTHING``: of racing calls, exactly one writes.

**Reads never mix revisions.** The metadata and a small blob's content are one statement. A
chunked blob is read by ONE statement (the row joined with its revision's chunks) through a
server-side cursor: one snapshot, so an overwrite committing meanwhile neither removes the
chunks being read nor mixes in its own; the read returns the old content whole.

**Bounded waits.** A store waits at most ``_LOCK_TIMEOUT_S`` for another store of the same key
and then fails as unavailable (the previous blob intact); the server ends a session idle inside
a transaction for ``_IDLE_IN_TRANSACTION_S`` (a stopped process does not hold a key).

Private by default: ``url`` holds the URL with its password masked, and errors name the server,
never the credentials.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any, Final

from nexus._postgres import DRIVER_MISSING, PostgresUrl, PostgresUrlError, bound_waits, no_secret, open_pool
from nexus.hooks import Clock, SystemClock
from nexus.raw._errors import RawKeyError, RawNotFoundError, RawQuotaError, RawUnavailableError
from nexus.raw._port import DEFAULT_CONTENT_TYPE, RawBackend, RawPage, RawStat, check_key, check_list_args

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
except ImportError:  # pragma: no cover - psycopg is a declared dependency
    psycopg = None  # type: ignore[assignment]

SCHEMA_VERSION: Final = 1
"""The layout this module writes; a database from a newer Nexus is refused, not misread."""

CHUNK_BYTES: Final = 1024 * 1024
"""A blob up to this size is held in its row; a larger one in rows of this size."""

_SCHEMA_LOCK: Final = 0x6E657875735F7261
"""The advisory lock key that serialises concurrent first opens creating the tables."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS raw_schema (version integer NOT NULL)",
    "CREATE SEQUENCE IF NOT EXISTS raw_revisions",
    """CREATE TABLE IF NOT EXISTS raw_blobs (
        key text COLLATE "C" PRIMARY KEY,
        revision bigint NOT NULL,
        size bigint NOT NULL,
        sha256 text NOT NULL,
        content_type text NOT NULL,
        created double precision NOT NULL,
        chunks integer NOT NULL,
        data bytea
    )""",
    """CREATE TABLE IF NOT EXISTS raw_chunks (
        key text COLLATE "C" NOT NULL,
        revision bigint NOT NULL,
        seq integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (key, revision, seq)
    )""",
    # Volatile (the default) and PL/pgSQL: each statement takes a snapshot of its own under READ
    # COMMITTED, so the chunks of a revision committed after the replacing statement began are
    # seen and deleted (see the module docstring).
    """CREATE OR REPLACE FUNCTION raw_drop_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM raw_chunks WHERE key = OLD.key AND revision = OLD.revision;
        RETURN NULL;
    END $$""",
    "DROP TRIGGER IF EXISTS raw_blobs_drop_chunks ON raw_blobs",
    """CREATE TRIGGER raw_blobs_drop_chunks AFTER UPDATE OF revision OR DELETE ON raw_blobs
        FOR EACH ROW WHEN (OLD.chunks > 0) EXECUTE FUNCTION raw_drop_chunks()""",
)

_COLUMNS: Final = "key, revision, size, sha256, content_type, created, chunks, data"
_VALUES: Final = "%s, nextval('raw_revisions'), %s, %s, %s, %s, %s, %s"
_STORE: Final = (
    f"INSERT INTO raw_blobs ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (key) DO UPDATE SET "
    "revision = EXCLUDED.revision, size = EXCLUDED.size, sha256 = EXCLUDED.sha256, "
    "content_type = EXCLUDED.content_type, created = EXCLUDED.created, chunks = EXCLUDED.chunks, "
    "data = EXCLUDED.data RETURNING revision"
)
_STORE_IF_ABSENT: Final = (
    f"INSERT INTO raw_blobs ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (key) DO NOTHING RETURNING revision"
)
_COPY_CHUNKS: Final = "COPY raw_chunks (key, revision, seq, data) FROM STDIN (FORMAT BINARY)"
_READ_CHUNKS: Final = (
    "SELECT b.size, b.chunks, c.seq, c.data FROM raw_blobs AS b JOIN raw_chunks AS c "
    "ON c.key = b.key AND c.revision = b.revision WHERE b.key = %s ORDER BY c.seq"
)
_CHUNKS_PER_FETCH: Final = 4
"""Chunks a read holds at a time beside the content it has joined so far."""
_LOCK_TIMEOUT_S: Final = 60
"""How long a store waits for another store of the same key (a large one may take a while)."""
_IDLE_IN_TRANSACTION_S: Final = 60


class PostgresRawOptions(PostgresUrl):
    """What the URL says: the libpq connection string and the pool's size (``nexus._postgres``)."""

    @classmethod
    def from_url(cls, url: str) -> PostgresRawOptions:
        """Parse ``postgresql://…`` / ``postgres://…``.

        Raises:
            RawKeyError: another scheme, a bad ``pool_size``, or a URL libpq refuses.
        """
        if psycopg is None:  # pragma: no cover
            raise RawUnavailableError(DRIVER_MISSING)
        try:
            return cls.parse(url, application_name="nexus-raw")
        except PostgresUrlError as exc:
            raise RawKeyError(f"NEXUS_RAW_URL {exc}") from None


class PostgresRaw(RawBackend):
    """Blobs in a PostgreSQL database; open it with ``await PostgresRaw.open(url)`` (see the module).

    Args:
        options: The parsed URL.
        pool: Connections in autocommit mode; a store of a large blob runs its own transaction.
        clock: Where ``created`` comes from.
    """

    def __init__(
        self, options: PostgresRawOptions, pool: AsyncConnectionPool[Any], *, clock: Clock | None = None
    ) -> None:
        self.url = options.shown
        self.options = options
        self._pool = pool
        self._clock = clock or SystemClock()
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, clock: Clock | None = None) -> PostgresRaw:
        """Connect, and create the tables on first use.

        Raises:
            RawKeyError: the URL is malformed.
            RawUnavailableError: the server cannot be reached or refuses us, or the database holds
                a layout of a newer Nexus.
        """
        options = PostgresRawOptions.from_url(url)
        try:
            pool = await open_pool(options, name="nexus-raw", configure=_configure)
            try:
                async with pool.connection() as con:
                    await _create_schema(con, options.shown)
            except BaseException:
                await pool.close()
                raise
        except (psycopg.Error, PoolTimeout) as exc:
            raise RawUnavailableError(
                f"cannot open the PostgreSQL Raw store at {options.shown}: {no_secret(exc, options.password)}"
            ) from None
        return cls(options, pool, clock=clock)

    # ---- storing ------------------------------------------------------------------------

    async def store(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat:
        stat = await self._store(key, data, content_type, only_new=False)
        assert stat is not None
        return stat

    async def store_if_absent(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat | None:
        return await self._store(key, data, content_type, only_new=True)

    async def _store(self, key: str, data: bytes, content_type: str, *, only_new: bool) -> RawStat | None:
        check_key(key)
        if not isinstance(content_type, str) or "\x00" in content_type:
            raise RawKeyError(f"a content type is a string without NUL characters, got {content_type!r}")
        content = memoryview(bytes(data) if not isinstance(data, bytes) else data)
        stat = RawStat(
            key=key,
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content_type=content_type,
            created=self._clock.now(),
        )
        chunks = 0 if len(content) <= CHUNK_BYTES else -(-len(content) // CHUNK_BYTES)
        row = [key, stat.size, stat.sha256, content_type, stat.created, chunks, None if chunks else content]
        statement = _STORE_IF_ABSENT if only_new else _STORE
        async with self._connection(f"storing {key!r}") as con:
            if not chunks:
                # One statement, committed on its own: the row is the whole blob.
                cursor = await con.execute(statement, row)
                return stat if await cursor.fetchone() is not None else None
            async with con.transaction():
                # The row first: its lock makes a concurrent store of the key wait for this one.
                cursor = await con.execute(statement, row)
                found = await cursor.fetchone()
                if found is None:
                    return None  # store_if_absent: the key holds a blob
                revision = int(found[0])
                async with con.cursor().copy(_COPY_CHUNKS) as copy:
                    copy.set_types(["text", "int8", "int4", "bytea"])
                    for seq in range(chunks):
                        await copy.write_row((key, revision, seq, content[seq * CHUNK_BYTES : (seq + 1) * CHUNK_BYTES]))
        return stat

    # ---- reading ------------------------------------------------------------------------

    async def retrieve(self, key: str) -> bytes:
        check_key(key)
        async with self._connection(f"reading {key!r}") as con:
            missed: int | None = None
            while True:
                cursor = await con.execute(
                    "SELECT revision, chunks, data FROM raw_blobs WHERE key = %s", [key], binary=True
                )
                row = await cursor.fetchone()
                if row is None:
                    raise RawNotFoundError(key)
                revision, chunks, data = row
                if not chunks:
                    return bytes(data)
                if revision == missed:
                    raise RawUnavailableError(f"blob {key!r} has no chunks of its revision: the store is damaged")
                content = await _read_chunks(con, key)
                if content is not None:
                    return content
                # Replaced or deleted between the two statements: look again (a revision that
                # still has no chunks the second time is damage, not a race).
                missed = revision

    async def exists(self, key: str) -> bool:
        check_key(key)
        async with self._connection(f"looking up {key!r}") as con:
            cursor = await con.execute("SELECT 1 FROM raw_blobs WHERE key = %s", [key])
            return await cursor.fetchone() is not None

    async def stat(self, key: str) -> RawStat:
        check_key(key)
        async with self._connection(f"reading {key!r}") as con:
            cursor = await con.execute(
                "SELECT size, sha256, content_type, created FROM raw_blobs WHERE key = %s", [key]
            )
            row = await cursor.fetchone()
        if row is None:
            raise RawNotFoundError(key)
        size, sha256, content_type, created = row
        return RawStat(key=key, size=int(size), sha256=sha256, content_type=content_type, created=float(created))

    async def list(self, prefix: str = "", cursor: str | None = None, limit: int = 1000) -> RawPage:
        check_list_args(prefix, cursor, limit)
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        after = cursor if cursor is not None and cursor >= prefix else None
        async with self._connection(f"listing {prefix!r}") as con:
            # key >= prefix bounds the index scan from below; LIKE (on a "C" column) from above.
            rows = await (
                await con.execute(
                    "SELECT key FROM raw_blobs WHERE key >= %s AND key LIKE %s AND (%s::text IS NULL OR key > %s) "
                    "ORDER BY key LIMIT %s",
                    [prefix, pattern, after, after, limit + 1],
                )
            ).fetchall()
        keys = [str(row[0]) for row in rows[:limit]]
        return RawPage(keys, keys[-1] if len(rows) > limit else None)

    # ---- deleting -----------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        check_key(key)
        async with self._connection(f"deleting {key!r}") as con:
            # The trigger removes a chunked blob's chunks in the same statement's transaction.
            cursor = await con.execute("DELETE FROM raw_blobs WHERE key = %s RETURNING 1", [key])
            found = await cursor.fetchone()
        if found is None:
            raise RawNotFoundError(key)

    # ---- plumbing -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; the driver's errors become Raw's, naming the server, never the password."""
        if self._closed:
            raise RawUnavailableError(f"{doing} failed: the Raw store at {self.url} is closed")
        try:
            async with self._pool.connection() as con:
                yield con
        except pg_errors.DiskFull as exc:
            raise RawQuotaError(
                f"{doing} failed: the PostgreSQL server at {self.url} is out of disk space ({exc})"
            ) from None
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            raise RawUnavailableError(
                f"{doing} in the PostgreSQL Raw store at {self.url} failed: {no_secret(exc, self.options.password)}"
            ) from None

    async def close(self) -> None:
        """Release the pool's connections (a store under way finishes first)."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close()


async def _read_chunks(con: psycopg.AsyncConnection[Any], key: str) -> bytes | None:
    """A chunked blob's content, read by one statement (one snapshot); None when the key no longer
    holds a chunked blob.

    Raises:
        RawUnavailableError: the chunks do not add up to the recorded size (a damaged store).
    """
    parts: builtins.list[bytes] = []
    size = chunks = 0
    async with con.transaction():
        # A server-side cursor needs a transaction; the statement's snapshot is what makes the read
        # consistent, whatever commits meanwhile.
        async with con.cursor(name="nexus_raw_read", binary=True) as cursor:
            cursor.itersize = _CHUNKS_PER_FETCH
            await cursor.execute(_READ_CHUNKS, [key])
            async for row in cursor:
                size, chunks, seq, data = row
                if seq != len(parts):
                    raise RawUnavailableError(f"blob {key!r} is missing chunk {len(parts)}: the store is damaged")
                parts.append(data)
    if not parts:
        return None
    content = b"".join(parts)
    if len(parts) != chunks or len(content) != size:
        raise RawUnavailableError(
            f"blob {key!r} has {len(parts)} chunks of {len(content)} bytes, but {chunks} of {size} were "
            "recorded: the store is damaged"
        )
    return content


async def _configure(con: psycopg.AsyncConnection[Any]) -> None:
    """Each pooled connection: bounded waits for a key's lock, and for an idle transaction."""
    await bound_waits(con, lock_timeout_s=_LOCK_TIMEOUT_S, idle_in_transaction_s=_IDLE_IN_TRANSACTION_S)


async def _create_schema(con: psycopg.AsyncConnection[Any], shown: str) -> None:
    """Create the tables (once, whoever opens first) and check the layout's version."""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
        cursor = await con.execute("SELECT to_regclass('raw_schema') IS NOT NULL")
        row = await cursor.fetchone()
        found = None
        if row is not None and row[0]:
            cursor = await con.execute("SELECT max(version) FROM raw_schema")
            version_row = await cursor.fetchone()
            found = None if version_row is None else version_row[0]
        if found is not None and found > SCHEMA_VERSION:
            raise RawUnavailableError(
                f"{shown} has Raw schema version {found}; this Nexus reads up to {SCHEMA_VERSION}"
            )
        if found == SCHEMA_VERSION:
            return
        for statement in _SCHEMA:
            await con.execute(statement)
        await con.execute("INSERT INTO raw_schema (version) VALUES (%s)", [SCHEMA_VERSION])


__all__ = ["CHUNK_BYTES", "SCHEMA_VERSION", "PostgresRaw", "PostgresRawOptions"]
