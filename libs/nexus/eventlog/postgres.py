"""``postgresql://…``: the event log in a PostgreSQL database, through psycopg 3's asyncio API.

For deployments that outgrow one machine: several processes (replicas of a service, the relay,
the CLI) share one log in one database. ``postgres://`` is accepted as well; the rest of the URL
is libpq's (``postgresql://USER:PASSWORD@HOST:PORT/DB?sslmode=require``, or a unix socket
directory as ``?host=/run/postgresql``), plus ``pool_size`` (the readers' connections, 4 by
default), which Nexus takes out before handing the URL to libpq.

Layout, created on first open (with ``eventlog_schema`` recording the layout's version):

* ``eventlog_events``: one row per event, keyed by ``position``, with the stream id, version,
  event id and type as indexed columns beside the event's JSON body (``bytea``: the exact bytes
  that were hashed), as in the SQLite adapter. Unique (``stream_id``, ``version``) and
  ``event_id``; (``type``, ``position``) for filtered reads.
* ``eventlog_head``: one row, the last committed position.

**Why positions are never seen out of order.** A higher position must never become visible
before a lower one, or a reader resuming after the last position it saw would skip the lower
one for good. Every write transaction, from any process, starts by locking the ``eventlog_head``
row (``SELECT … FOR UPDATE``) and holds that lock until it commits; it numbers its events from
the head it read under the lock and moves the head in the same transaction. So write
transactions are serialised, and the next one can only take the lock once the previous one has
committed or rolled back: PostgreSQL releases a transaction's locks after its commit is
visible to new snapshots (``ProcArrayEndTransaction`` runs before the lock release in
``CommitTransaction``), and under READ COMMITTED each later statement of the waiting
transaction takes a new snapshot that includes it (the locked row itself is re-read at its
newest version). Commit order is therefore position order, and any one statement's snapshot
holds a gap-free prefix of the log: the committed watermark is the head row as that same
statement sees it, and no open transaction can ever commit a position at or below it. Readers
run each read as ONE statement (events and, where it matters, the head together), never
stitched from two snapshots. ``tests/eventlog/test_eventlog_postgres.py`` holds an append's
transaction open on another connection and shows that a later append neither commits a higher
position nor is seen before it. The price is that writers of all processes take turns; within
a process they share each turn (group commit, below), which is where throughput comes from.
(The alternative, positions from a sequence with readers held below ``pg_snapshot_xmin``, lets
writers commit in parallel but needs the transaction id stored per row, and a reader can still
not tell a committed gap from one that is about to be filled without waiting.)

**Group commit.** One writer task per open log owns the writing connection. Callers encode
and digest their events (``chain.content_bytes``) and queue the append; the writer takes every
queued append and commits them in ONE transaction of two round trips, whatever the group's
size: (1) begin, lock the head, then look up the group's event ids (idempotency) and the last
version and hash of the group's streams it has not cached; (2) insert every placed event, move
the head and notify in one statement, and commit. Each round trip is one simple-protocol query
of several statements, its values inlined as quoted literals (``psycopg.sql.Literal``); a
group of large bodies is sent with parameters instead, and committed in a third round trip.
(psycopg's pipeline mode also saves round trips, but its client side measured as costly as
the round trips it saves on loopback.)
Each append is decided on its own (a ConcurrencyError or a DuplicateEventError fails
that append alone); should the store refuse the group's insert (a constraint, a trigger),
the group is committed again one append per transaction, so only the refused append fails.
The writer caches each stream's last version and hash, valid while the head it finds under
the lock is the one it last committed (else another process wrote, and the cache is dropped).

**Tailing without a busy poll.** Every write transaction sends ``NOTIFY nexus_eventlog`` with
the committed event types (PostgreSQL delivers it at commit). Each open log keeps one
connection listening; a notification wakes the subscribers following one of its types, and a
commit of the same process wakes them directly. Subscribers following only other types look
``_LAZY_WAKE_S`` later, once for all the commits meanwhile, to move past them. A subscriber
also looks once every ``_SAFETY_POLL_S`` (a notification lost with a dropped listening
connection is not waited for forever); that look is one indexed read.

**Bounded waits.** An append waits at most ``_LOCK_TIMEOUT_S`` for the head's lock (another
process's stuck transaction) and then fails as unavailable, saying that a retry with the same
event ids is safe; the server ends a writing session idle inside a transaction for
``_IDLE_IN_TRANSACTION_S`` (a stopped process does not hold the head for everyone).

Private by default: the password in the URL is never logged or shown (``url`` holds the URL
with the password masked), and errors name the server, never the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from nexus._postgres import (
    DRIVER_MISSING,
    PostgresUrl,
    PostgresUrlError,
    bound_waits,
    mask_password,
    no_secret,
    open_pool,
)
from nexus.eventlog._codec import decode_bodies
from nexus.eventlog._common import (
    GENESIS,
    GroupCommitStats,
    QueuedAppend,
    after_scan,
    check_append,
    check_batch_size,
    check_expected,
    check_limit,
    check_position,
    check_types,
    encode_contents,
    last_hash,
    match_stored,
    placed_records,
    remember_streams,
    resolve_max_event_bytes,
    seal_run,
    settle,
    unfiltered_page,
)
from nexus.eventlog._errors import (
    EventLogArgumentError,
    EventLogClosedError,
    EventLogError,
    EventLogUnavailableError,
)
from nexus.eventlog._port import ANY, EventLog
from nexus.proto import CloudEvent

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
except ImportError:  # pragma: no cover - psycopg is a declared dependency
    psycopg = None  # type: ignore[assignment]

SCHEMA_VERSION: Final = 1
"""The layout this module writes; a database from a newer Nexus is refused, not misread."""

CHANNEL: Final = "nexus_eventlog"
"""The LISTEN/NOTIFY channel every write transaction notifies."""

_SCHEMA_LOCK: Final = 0x6E657875735F6576
"""The advisory lock key that serialises concurrent first opens creating the tables."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS eventlog_schema (version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS eventlog_events (
        position bigint PRIMARY KEY,
        stream_id text NOT NULL,
        version bigint NOT NULL,
        event_id text NOT NULL UNIQUE,
        type text NOT NULL,
        body bytea NOT NULL,
        UNIQUE (stream_id, version)
    )""",
    "CREATE INDEX IF NOT EXISTS eventlog_events_type_position ON eventlog_events (type, position)",
    """CREATE TABLE IF NOT EXISTS eventlog_head (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        position bigint NOT NULL
    )""",
    "INSERT INTO eventlog_head (one, position) VALUES (true, 0) ON CONFLICT DO NOTHING",
)

_BEGIN_LOCK_LOOKUP: Final = (
    "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT position FROM eventlog_head FOR UPDATE; "
    "SELECT NULL::text, NULL::bigint, body FROM eventlog_events WHERE event_id = ANY({ids}::text[]) "
    "UNION ALL SELECT s.id, e.version, e.body FROM unnest(CASE WHEN (SELECT position FROM eventlog_head) = {cached} "
    "THEN {unknown}::text[] ELSE {streams}::text[] END) AS s(id) CROSS JOIN LATERAL "
    "(SELECT version, body FROM eventlog_events WHERE stream_id = s.id ORDER BY version DESC LIMIT 1) AS e"
)
"""Round trip 1 of a write transaction, three statements in one simple-protocol query: begin,
lock the head, then (a statement of its own, so its snapshot includes every commit before the
lock) the group's ids already stored and the last event of each stream not cached, or of every
stream of the group when the head is not the one this log last committed (another process
wrote: the cache may be stale)."""
_WRITE_LITERAL_BYTES: Final = 256 * 1024
"""A group whose bodies are smaller than this is written and committed in one round trip, its
values inlined as quoted literals (a simple-protocol query cannot carry parameters); a larger
one is sent with parameters (binary, not hex-quoted), and committed in a round trip of its own."""
_WRITE: Final = (
    "WITH inserted AS (INSERT INTO eventlog_events (position, stream_id, version, event_id, type, body) "
    "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bytea[])), "
    "head AS (UPDATE eventlog_head SET position = %s) SELECT pg_notify(%s, %s)"
)
_PAGE: Final = "SELECT body FROM eventlog_events WHERE {where} ORDER BY position LIMIT %s"
"""A page of bodies, joined into one JSON array here: measured 4-5 times faster than having the
server join them (``string_agg`` over ``bytea``), which copies every body again."""

_MAX_EVENTS_PER_TRANSACTION: Final = 50_000
"""The writer stops taking queued appends here, so one transaction stays a bounded size."""
_STREAM_CACHE_SIZE: Final = 100_000
_SAFETY_POLL_S: Final = 1.0
"""How often an idle subscriber looks even without a notification (see the module docstring)."""
_LAZY_WAKE_S: Final = 0.05
"""How long after a commit of other types a filtered subscriber looks (once for all commits meanwhile)."""
_SUBSCRIBE_PAGE: Final = 1000
_REPLAY_PAGE: Final = 2000
"""Events per page ``iter_all`` fetches and decodes at a time (batches of more join pages)."""
_SCAN_WINDOW: Final = 50_000
"""Positions one read of a filtered subscription looks at, at most (as in the SQLite adapter)."""
_NOTIFY_TYPES_BYTES: Final = 7000
"""A notification names the committed types up to this size (PostgreSQL's payload limit is
8000 bytes); a commit of more types notifies without them, which wakes every subscriber."""
_LOCK_TIMEOUT_S: Final = 30
"""How long an append waits for the head's lock before failing as unavailable."""
_IDLE_IN_TRANSACTION_S: Final = 60
"""The server ends a writing session idle this long inside a transaction (a stopped process)."""
_RECONNECT_MAX_S: Final = 5.0


_json = msgspec.json.Encoder()


class _Notice(msgspec.Struct, omit_defaults=True):
    """A notification's payload: which log sent it and the types it committed (None: any)."""

    sender: str
    types: list[str] | None = None


_notice_decoder = msgspec.json.Decoder(_Notice)


class PostgresOptions(PostgresUrl):
    """What the URL says: the libpq connection string and the readers' pool size (``nexus._postgres``)."""

    @classmethod
    def from_url(cls, url: str) -> PostgresOptions:
        """Parse ``postgresql://…`` / ``postgres://…``.

        Raises:
            EventLogArgumentError: another scheme, a bad ``pool_size``, or a URL libpq refuses.
        """
        if psycopg is None:  # pragma: no cover
            raise EventLogUnavailableError(DRIVER_MISSING)
        try:
            return cls.parse(url, application_name="nexus-eventlog")
        except PostgresUrlError as exc:
            raise EventLogArgumentError(str(exc)) from None


@dataclass
class _Group:
    """The rows and outcomes of one write transaction, built while placing its appends."""

    positions: list[int] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    outcomes: list[tuple[QueuedAppend, list[CloudEvent] | None, BaseException | None]] = field(default_factory=list)
    placed: dict[str, CloudEvent] = field(default_factory=dict)
    """Events placed in this transaction, by id (a retry queued beside its original finds them)."""
    pending: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    """Each stream's last version and hash once this transaction commits."""


_STOP: Final = object()


class PostgresEventLog(GroupCommitStats, EventLog):
    """The event log in a PostgreSQL database; open it with ``await PostgresEventLog.open(url)``."""

    def __init__(
        self,
        options: PostgresOptions,
        writer: psycopg.AsyncConnection[Any],
        listener: psycopg.AsyncConnection[Any],
        pool: AsyncConnectionPool[Any],
        *,
        max_event_bytes: int | None = None,
    ) -> None:
        self.url = options.shown
        self.options = options
        self.max_event_bytes = resolve_max_event_bytes(max_event_bytes)
        self._sender = secrets.token_hex(8)
        self._closed = False
        self._pool = pool
        # Writer state (the writer task alone touches it).
        self._writer_con: psycopg.AsyncConnection[Any] | None = writer
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams: dict[str, tuple[int, bytes]] = {}
        self._cached_head: int | None = None
        """The head this log last committed: the stream cache is valid while it is still the head."""
        self._transactions = 0
        self._appends = 0
        # Subscribers waiting for a commit, with the types each follows (None: every type).
        self._waiters: dict[asyncio.Future[None], frozenset[str] | None] = {}
        self._lazy: set[asyncio.Future[None]] = set()
        """Waiters with a wake-up scheduled ``_LAZY_WAKE_S`` after a commit of other types."""
        self._writer_task = asyncio.create_task(self._write_loop(), name="nexus-eventlog-postgres-writer")
        self._listener: psycopg.AsyncConnection[Any] | None = listener
        self._listener_task = asyncio.create_task(self._listen_loop(), name="nexus-eventlog-postgres-listen")

    @classmethod
    async def open(cls, url: str, *, max_event_bytes: int | None = None) -> PostgresEventLog:
        """Connect, create the tables on first use, and start listening for other writers' commits.

        ``max_event_bytes``: the per-event size limit (default: ``NEXUS_MAX_EVENT_BYTES``, else 512 KiB).

        Raises:
            EventLogArgumentError: the URL or the limit is malformed.
            EventLogUnavailableError: the server cannot be reached or refuses us, or the database
                holds a layout of a newer Nexus.
        """
        options = PostgresOptions.from_url(url)
        limit = resolve_max_event_bytes(max_event_bytes)
        opened: list[psycopg.AsyncConnection[Any]] = []
        pool: AsyncConnectionPool[Any] | None = None
        try:
            try:
                writer = await psycopg.AsyncConnection.connect(options.conninfo, autocommit=True)
                opened.append(writer)
                await _create_schema(writer, options.shown)
                await _writer_session(writer)
                listener = await psycopg.AsyncConnection.connect(options.conninfo, autocommit=True)
                opened.append(listener)
                # Listening before open() returns: no commit after it goes unnoticed.
                await listener.execute(f"LISTEN {CHANNEL}")
                pool = await open_pool(options, name="nexus-eventlog")
            except (psycopg.Error, PoolTimeout) as exc:
                raise EventLogUnavailableError(
                    f"cannot open the PostgreSQL event log at {options.shown}: {no_secret(exc, options.password)}"
                ) from None
        except BaseException:
            for con in opened:
                with contextlib.suppress(psycopg.Error):
                    await con.close()
            if pool is not None:
                await pool.close()
            raise
        return cls(options, writer, listener, pool, max_event_bytes=limit)

    # ---- writing ----------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[CloudEvent], expected_version: int = ANY
    ) -> list[CloudEvent]:
        self._check_open()
        check_append(stream_id, events, expected_version)
        batch = list(events)
        # Encoded and digested here, outside the writer that every concurrent append waits for.
        contents = encode_contents(batch, stream_id=stream_id, limit=self.max_event_bytes)
        future: asyncio.Future[list[CloudEvent]] = asyncio.get_running_loop().create_future()
        self._check_open()
        self._queue.put_nowait(QueuedAppend(stream_id, batch, contents, expected_version, future))
        # If the caller is cancelled here the append may still be committed, as with any store.
        return await future

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            item = await self._queue.get()
            group: list[QueuedAppend] = []
            size = 0
            while True:
                if item is _STOP:
                    stop = True
                    break
                group.append(item)
                size += len(item.events)
                if size >= _MAX_EVENTS_PER_TRANSACTION or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            group = [request for request in group if not request.future.done()]
            if group:
                await self._commit(group)
        if self._writer_con is not None:
            with contextlib.suppress(psycopg.Error):
                await self._writer_con.close()
            self._writer_con = None

    async def _commit(self, group: list[QueuedAppend]) -> None:
        """Commit ``group`` in one transaction; if the store refuses it, one append per transaction."""
        try:
            done = await self._transaction(group)
        except _Refused as refused:
            if len(group) == 1 or not refused.split:
                settle([(request, None, refused.error) for request in group])
                return
            for request in group:
                await self._commit([request])
            return
        except Exception as exc:
            # Not a verdict on any one append (the store is damaged, or a bug): all of them fail,
            # and the writer carries on with the next group.
            error = exc if isinstance(exc, EventLogError) else EventLogUnavailableError(f"the append failed: {exc!r}")
            settle([(request, None, error) for request in group])
            return
        settle(done.outcomes)
        if done.positions:  # a group of retries alone wrote nothing: nobody to wake
            self._wake(set(done.types))

    async def _transaction(self, requests: list[QueuedAppend]) -> _Group:
        """One write transaction for ``requests``: placed under the head's lock, inserted, committed.

        Raises:
            _Refused: the store refused the insert (nothing of the group is stored).
        """
        group = _Group()
        try:
            con = await self._connection()
            streams = sorted({r.stream_id for r in requests})
            ids = [e.id for r in requests for e in r.events]
            # Round trip 1: begin, lock the head, look up (see _BEGIN_LOCK_LOOKUP).
            cursor = await con.execute(
                sql.SQL(_BEGIN_LOCK_LOOKUP).format(
                    ids=sql.Literal(ids),
                    cached=sql.Literal(-1 if self._cached_head is None else self._cached_head),
                    unknown=sql.Literal([s for s in streams if s not in self._streams]),
                    streams=sql.Literal(streams),
                )
            )
            cursor.nextset()  # past BEGIN's result, to the head's
            head_row = await cursor.fetchone()
            if head_row is None:
                raise EventLogUnavailableError("the eventlog_head row is missing: the database is damaged")
            head = int(head_row[0])
            if head != self._cached_head:
                self._streams.clear()  # the lookup read every stream of the group again
            cursor.nextset()
            stored_bodies, states = [], []
            for stream_id, version, body in await cursor.fetchall():
                if stream_id is None:
                    stored_bodies.append(body)
                else:
                    states.append((stream_id, version, body))
            stored = decode_bodies(stored_bodies)
            found = {event.id: event for event in stored}
            state = {row[0]: (int(row[1]), last_hash(row[2])) for row in states}
            position = head + 1
            for request in requests:
                position = self._place(request, group, found, state, position)
            if group.positions:
                # Round trip 2: the rows, the head and the notification in one statement, and
                # the commit (a large group: 2 and 3).
                values = [
                    group.positions,
                    group.streams,
                    group.versions,
                    group.ids,
                    group.types,
                    group.bodies,
                    position - 1,
                    CHANNEL,
                    self._notice(group),
                ]
                if sum(map(len, group.bodies)) < _WRITE_LITERAL_BYTES:
                    literal = sql.SQL(_WRITE.replace("%s", "{}")).format(*map(sql.Literal, values))
                    await con.execute(literal + sql.SQL("; COMMIT"))
                else:
                    await con.execute(_WRITE, values)
                    await con.execute(b"COMMIT")
            else:
                await con.execute(b"ROLLBACK")  # nothing to write: let the head's lock go
        except psycopg.Error as exc:
            await self._abandon()
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                # The connection, a lock wait or the server failed, not one append's data: the
                # whole group fails, without being tried again one by one.
                raise _Refused(
                    EventLogUnavailableError(
                        "the PostgreSQL event log failed during an append; if it was committed, a retry with the "
                        f"same event ids returns it: {no_secret(exc, self.options.password)}"
                    ),
                    split=False,
                ) from None
            raise _Refused(EventLogUnavailableError(f"PostgreSQL refused the append: {exc}"), split=True) from None
        except BaseException:
            await self._abandon()
            raise
        if group.positions:
            self._transactions += 1
            self._cached_head = position - 1
            remember_streams(self._streams, group.pending, _STREAM_CACHE_SIZE)
        self._appends += len(group.outcomes)
        return group

    def _place(
        self,
        request: QueuedAppend,
        group: _Group,
        found: dict[str, CloudEvent],
        state: dict[str, tuple[int, bytes]],
        position: int,
    ) -> int:
        """Decide one append and add its rows to ``group``; return the next free position.

        An error that concerns this append alone (a conflict, a used id, a failure while
        sealing) becomes its outcome and leaves ``group`` as it was.
        """
        stream_id, events = request.stream_id, request.events
        try:
            already = [group.placed.get(e.id) or found.get(e.id) for e in events]
            stored = match_stored(stream_id, events, already)
            if stored is not None:
                group.outcomes.append((request, stored, None))  # a retry: answered, nothing written
                return position
            version, prevhash = (
                group.pending.get(stream_id) or self._streams.get(stream_id) or state.get(stream_id) or (0, GENESIS)
            )
            check_expected(stream_id, request.expected_version, version)
            sealed = seal_run(
                request.contents,
                stream_key=_json.encode(stream_id),
                version=version + 1,
                position=position,
                prevhash=prevhash,
            )
            hashes = [hash_ for hash_, _ in sealed]
            records = placed_records(
                events, stream_id=stream_id, version=version + 1, position=position, prevhash=prevhash, hashes=hashes
            )
        except Exception as exc:
            group.outcomes.append((request, None, exc))
            return position
        for offset, (event, (_, body)) in enumerate(zip(events, sealed, strict=True)):
            group.positions.append(position + offset)
            group.streams.append(stream_id)
            group.versions.append(version + 1 + offset)
            group.ids.append(event.id)
            group.types.append(event.type)
            group.bodies.append(body)
        for record in records:
            group.placed[record.id] = record
        group.pending[stream_id] = (version + len(events), hashes[-1])
        group.outcomes.append((request, records, None))
        return position + len(events)

    def _notice(self, group: _Group) -> str:
        types = sorted(set(group.types))
        payload = _json.encode(_Notice(self._sender, types))
        if len(payload) > _NOTIFY_TYPES_BYTES:
            payload = _json.encode(_Notice(self._sender))
        return payload.decode()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._writer_con is None or self._writer_con.closed:
            self._writer_con = await psycopg.AsyncConnection.connect(self.options.conninfo, autocommit=True)
            await _writer_session(self._writer_con)
        return self._writer_con

    async def _abandon(self) -> None:
        """After a failed transaction: roll back (or drop a broken connection) and forget the cache."""
        self._streams.clear()
        self._cached_head = None
        con = self._writer_con
        if con is None:
            return
        try:
            await con.rollback()
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                await con.close()
            self._writer_con = None

    # ---- waking subscribers -----------------------------------------------------------

    def _add_waiter(self, types: frozenset[str] | None) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = types
        return waiter

    def _wake(self, stored: set[str] | None) -> None:
        """Wake the subscribers following every type or one of ``stored`` (None: all of them) now,
        and the others ``_LAZY_WAKE_S`` later.

        Why not all of them at once: a service's triggers follow a few types of a busy log;
        waking them on each commit would cost a query each for nothing. A subscriber whose types
        a commit lacks still looks, later and once for all the commits meanwhile, so it moves
        past the events it does not want instead of scanning them again on its next match.
        """
        loop = asyncio.get_running_loop()
        for waiter, types in list(self._waiters.items()):
            if stored is None or types is None or not types.isdisjoint(stored):
                del self._waiters[waiter]
                _resolve_waiter(waiter)
            elif waiter not in self._lazy:
                self._lazy.add(waiter)
                loop.call_later(_LAZY_WAKE_S, self._lazy_wake, waiter)

    def _lazy_wake(self, waiter: asyncio.Future[None]) -> None:
        self._lazy.discard(waiter)
        self._waiters.pop(waiter, None)
        _resolve_waiter(waiter)

    async def _listen_loop(self) -> None:
        """Wake subscribers on other processes' commits; reconnect when the connection drops."""
        delay = 0.1
        while not self._closed:
            try:
                if self._listener is None:
                    self._listener = await psycopg.AsyncConnection.connect(self.options.conninfo, autocommit=True)
                    await self._listener.execute(f"LISTEN {CHANNEL}")
                    self._wake(None)  # commits may have gone unnoticed while we were away
                    delay = 0.1
                async for notify in self._listener.notifies():
                    self._on_notice(notify.payload)
            except psycopg.Error:
                await self._drop_listener()
                if self._closed:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)

    async def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(psycopg.Error):
                await listener.close()

    def _on_notice(self, payload: str) -> None:
        try:
            notice = _notice_decoder.decode(payload)
        except msgspec.DecodeError:
            self._wake(None)  # not ours to read: look anyway
            return
        if notice.sender == self._sender:
            return  # our own commit woke its subscribers already
        self._wake(None if notice.types is None else set(notice.types))

    # ---- reading ----------------------------------------------------------------------

    async def _fetch(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one read statement on a pooled connection (one statement: one snapshot)."""
        self._check_open()
        try:
            async with self._pool.connection() as con:
                cursor = await con.execute(query, params, binary=True)
                rows: list[tuple[Any, ...]] = await cursor.fetchall()
                return rows
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            self._check_open()
            raise EventLogUnavailableError(
                f"reading the PostgreSQL event log failed: {no_secret(exc, self.options.password)}"
            ) from None

    async def _page(self, where: str, params: list[Any], limit: int | None) -> list[CloudEvent]:
        """Events matching ``where`` in position order."""
        rows = await self._fetch(_PAGE.format(where=where), [*params, limit])
        return decode_bodies([row[0] for row in rows])

    async def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> list[CloudEvent]:
        check_position("from_version", from_version)
        check_limit(limit)
        rows = await self._fetch(
            "SELECT body FROM eventlog_events WHERE stream_id = %s AND version >= %s ORDER BY version LIMIT %s",
            [stream_id, from_version, limit],
        )
        return decode_bodies([row[0] for row in rows])

    async def read_all(
        self, from_position: int = 0, limit: int | None = None, types: Iterable[str] | None = None
    ) -> list[CloudEvent]:
        check_position("from_position", from_position)
        check_limit(limit)
        wanted = check_types(types)
        if limit == 0 or (wanted is not None and not wanted):
            self._check_open()
            return []
        # One statement is one snapshot, and write transactions commit in position order (see
        # the module docstring): a page never has a hole that a later commit could fill.
        if wanted is None:
            return await self._page("position >= %s", [from_position], limit)
        return await self._page("position >= %s AND type = ANY(%s::text[])", [from_position, sorted(wanted)], limit)

    async def iter_all(
        self, from_position: int = 0, *, types: Iterable[str] | None = None, batch_size: int = 5000
    ) -> AsyncIterator[list[CloudEvent]]:
        """Batches of ``read_all``, each page fetched while the one before it is decoded.

        Fetching a page is the server's work and the socket's, decoding it is this process's:
        side by side, a replay takes about the longer of the two instead of their sum. Pages
        hold at most ``_REPLAY_PAGE`` events (a batch may join several); at most one page
        waits undecoded, so memory stays bounded.
        """
        check_position("from_position", from_position)
        check_batch_size(batch_size)
        wanted = check_types(types)
        if wanted is not None and not wanted:
            return
        where, extra = "position >= %s", list[Any]()
        if wanted is not None:
            where, extra = "position >= %s AND type = ANY(%s::text[])", [sorted(wanted)]
        query = f"SELECT position, body FROM eventlog_events WHERE {where} ORDER BY position LIMIT %s"

        def fetch(position: int, limit: int) -> asyncio.Future[list[tuple[Any, ...]]]:
            return asyncio.ensure_future(self._fetch(query, [position, *extra, limit]))

        batch: list[CloudEvent] = []
        ahead = fetch(max(from_position, 1), min(batch_size, _REPLAY_PAGE))
        try:
            while True:
                rows = await ahead
                if not rows:
                    if batch:
                        yield batch
                    return
                room = batch_size - len(batch) - len(rows)
                ahead = fetch(int(rows[-1][0]) + 1, min(room or batch_size, _REPLAY_PAGE))
                page = decode_bodies([row[1] for row in rows])
                batch = page if not batch else batch + page
                if not room:
                    yield batch
                    batch = []
        finally:
            # A consumer that stops early leaves one read in flight: let it finish unobserved.
            if not ahead.done():
                with contextlib.suppress(Exception):
                    await ahead
            elif not ahead.cancelled():
                ahead.exception()

    async def head(self) -> int:
        [(position,)] = await self._fetch("SELECT position FROM eventlog_head", [])
        return int(position)

    async def stream_version(self, stream_id: str) -> int:
        [(version,)] = await self._fetch(
            "SELECT coalesce(max(version), 0) FROM eventlog_events WHERE stream_id = %s", [stream_id]
        )
        return int(version)

    async def get_event(self, event_id: str) -> CloudEvent | None:
        rows = await self._fetch("SELECT body FROM eventlog_events WHERE event_id = %s", [event_id])
        return decode_bodies([rows[0][0]])[0] if rows else None

    async def subscribe(
        self, from_position: int = 0, *, types: Iterable[str] | None = None
    ) -> AsyncIterator[CloudEvent]:
        check_position("from_position", from_position)
        wanted = check_types(types)
        names = sorted(wanted) if wanted is not None else []
        position = max(from_position, 1)
        while True:
            self._check_open()
            # Registered before reading, so a commit between the read and the wait wakes us.
            waiter = self._add_waiter(wanted)
            try:
                if wanted is None:
                    batch, following, more = await unfiltered_page(self, position, _SUBSCRIBE_PAGE)
                elif names:
                    batch, following, more = await _scan_types(self, names, position)
                else:
                    batch, following, more = [], position, False
                # A filtered read that moved past events it did not want looks once more soon:
                # the commits it moved past may be the start of a burst.
                settle = following > position and not batch
                position = following
                for event in batch:
                    yield event
                if more:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_LAZY_WAKE_S if settle else _SAFETY_POLL_S):
                        await asyncio.shield(waiter)
            finally:
                self._waiters.pop(waiter, None)

    async def ping(self) -> None:
        await self._fetch("SELECT 1", [])

    # ---- lifecycle --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogClosedError("the event log is closed")

    async def close(self) -> None:
        """Finish the appends already queued, then release the connections."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(_STOP)
        with contextlib.suppress(Exception):
            await self._writer_task
        self._listener_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._listener_task
        await self._drop_listener()
        self._wake(None)
        await self._pool.close()


class _Refused(Exception):
    """A write transaction failed as a whole; ``error`` is what its appends are told."""

    def __init__(self, error: EventLogError, *, split: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.split = split
        """Whether one of the appends may be the cause: then each is committed again alone."""


async def _scan_types(log: PostgresEventLog, types: list[str], position: int) -> tuple[list[CloudEvent], int, bool]:
    """A filtered subscription's next page: the matching events, where the next read starts, and
    whether to read again at once (the page was full) or wait for a commit.

    One statement, so the matches and the head come from one snapshot: when the page is not
    full, every event up to that head was looked at, so the next read starts past it. The scan
    covers at most ``_SCAN_WINDOW`` positions, so a long backlog is read a window at a time.
    """
    end = position + _SCAN_WINDOW
    rows = await log._fetch(
        "SELECT h.position, p.body FROM eventlog_head AS h LEFT JOIN LATERAL (SELECT body FROM eventlog_events "
        "WHERE position >= %s AND position < %s AND type = ANY(%s::text[]) ORDER BY position LIMIT %s) AS p ON true",
        [position, end, types, _SUBSCRIBE_PAGE],
    )
    head = int(rows[0][0])
    events = decode_bodies([row[1] for row in rows if row[1] is not None])
    count = len(events)
    last = events[-1].position or position if events else 0
    return after_scan(events, full=count >= _SUBSCRIBE_PAGE, last=last, position=position, end=end, head=head)


async def _create_schema(con: psycopg.AsyncConnection[Any], shown: str) -> None:
    """Create the tables (once, whoever opens first) and check the layout's version."""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
        for statement in _SCHEMA:
            await con.execute(statement)
        cursor = await con.execute("SELECT max(version) FROM eventlog_schema")
        row = await cursor.fetchone()
        found = None if row is None else row[0]
        if found is None:
            await con.execute("INSERT INTO eventlog_schema (version) VALUES (%s)", [SCHEMA_VERSION])
        elif found > SCHEMA_VERSION:
            raise EventLogUnavailableError(
                f"{shown} has event log schema version {found}; this Nexus reads up to {SCHEMA_VERSION}"
            )


async def _writer_session(con: psycopg.AsyncConnection[Any]) -> None:
    """Set up the writing connection's session.

    The connection is in autocommit mode: the writer begins its transactions itself, at READ
    COMMITTED whatever the server's default (``_BEGIN_LOCK_LOOKUP``), since the ordering
    argument (module docstring) needs each statement to see the commits that came before its
    lock, and in the same round trip as the lock. A bounded wait for the
    head's lock, so an append fails (EventLogUnavailableError) rather than hangs behind
    another process's stuck transaction, and a bound on our own time idle inside a
    transaction, so a stopped process does not hold the head for everyone.
    """
    await bound_waits(con, lock_timeout_s=_LOCK_TIMEOUT_S, idle_in_transaction_s=_IDLE_IN_TRANSACTION_S)


def _resolve_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresEventLog", "PostgresOptions", "mask_password"]
