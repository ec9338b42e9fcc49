"""``sqlite:///PATH``: the embedded event log, one file in WAL mode.

Layout: one ``events`` table keyed by position, with the stream id, version, event id and
type as indexed columns beside each event's JSON body (one BLOB, decoded a page at a time),
and a ``schema_version`` table for migrations. New files use 8 KiB pages.

The ``(type, position)`` index costs about 0.5-1 µs of an append's ~13 µs of CPU per event
(1000-event appends; the difference is within the noise of a shared 2-core machine); it is
kept because without it a ``types`` filter (projections catching up on a few event types, a
subscription following a few types of a busy log) reads the whole table instead of the matching
rows.

Writes go through ONE writer thread that owns the only writing connection. Callers queue
their appends; the writer drains the queue and commits everything pending in one transaction
(group commit). A ConcurrencyError or DuplicateEventError fails that append alone: an append
of up to 100 events is one INSERT statement, which SQLite undoes by itself when it fails;
a longer one runs inside a SAVEPOINT. With ``synchronous=FULL`` every transaction is one
fsync, so concurrent callers share it instead of queueing behind each other's.

The work is split so the writer does as little as possible: a caller encodes and digests a
short append's events before queueing it (``chain.content_bytes``; the hash's content part
does not depend on the event's place), the writer only assigns places and hashes the short
placement array (``chain.seal_content``), and the caller builds the stored records from the
hashes the writer returns. A long append is encoded by the writer chunk by chunk, each
chunk's INSERT running on an inserter thread while the next chunk is sealed.

Reads run on a small pool of threads, each with its own read-only connection, so a large
page never blocks the event loop and never waits for the writer (WAL readers see the last
committed snapshot). ``iter_all`` reads page k+1 while page k is decoded.

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, with optional query
parameters ``synchronous`` (``FULL`` by default, or ``NORMAL``, ``EXTRA``, ``OFF``) and
``busy_timeout`` (milliseconds another process may hold the write lock, 5000 by default).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from nexus.eventlog._codec import decode_bodies, decode_page
from nexus.eventlog._common import (
    GENESIS,
    GroupCommitStats,
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
    unfiltered_page,
)
from nexus.eventlog._errors import (
    ConcurrencyError,
    EventLogArgumentError,
    EventLogClosedError,
    EventLogError,
    EventLogUnavailableError,
)
from nexus.eventlog._port import ANY, NO_STREAM, EventLog
from nexus.eventlog._watch import WakeChannel
from nexus.fs import create_private_file, make_private_dir
from nexus.proto import CloudEvent

SCHEMA_VERSION: Final = 2
"""The layout this module writes; a file from a newer Nexus is refused, not misread.

2: hashes as ``nexus.eventlog.chain`` defines them (content digest, then placement). Files of
version 1 (the development versions before it) chained their events with another definition
and are refused: their events would all fail verification.
"""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        body BLOB NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version ON events (stream_id, version)",
    "CREATE INDEX IF NOT EXISTS events_type_position ON events (type, position)",
)

_INSERT_PREFIX = "INSERT INTO events (position, stream_id, version, event_id, type, body) VALUES "
_INSERT_ROWS = 100
_INSERT_MANY = _INSERT_PREFIX + ",".join(["(?, ?, ?, ?, ?, ?)"] * _INSERT_ROWS)
_SYNCHRONOUS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
_READ_THREADS = 4
_MAX_EVENTS_PER_TRANSACTION = 50_000
"""The writer stops draining the queue here, so one transaction's fsync never waits on a huge backlog."""
_STREAM_CACHE_SIZE = 100_000
_EXTERNAL_POLL_S = 0.05
"""How often an idle subscriber looks for events another process appended to the same file,
where commits cannot be watched (``_watch.WakeChannel``: Linux's inotify).

Appends of this process wake subscribers at once. Another process's (``make run`` relays from a
process of its own) are announced on the wake channel: after each commit the writer writes a
byte to its own file in ``<log>-wake/``, and every other process watching the directory wakes
its subscribers. Without a watch, only looking finds them: 20 indexed reads a second per idle
subscriber, which across the platform's processes kept an idle ``make run`` at several percent
of a core."""
_WATCHED_POLL_S = 2.0
"""An idle subscriber's look for other processes' events where the file is watched: only a
safety net (a watch that missed a write), so an idle platform rests."""
_SUBSCRIBE_PAGE = 1000
_SCAN_WINDOW = 50_000
"""Positions one read of a filtered subscription looks at, at most (see ``_scan_types``)."""
_REPLAY_PAGE = 2000
"""Events per page ``iter_all`` fetches and decodes at a time (batches of more join pages)."""

_T = TypeVar("_T")


_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class SqliteOptions:
    """What the URL says about the file and how to write it."""

    path: str
    """The database file."""
    synchronous: str = "FULL"
    """``PRAGMA synchronous``: FULL (default: a commit survives power loss), NORMAL, EXTRA or OFF."""
    busy_timeout_ms: int = 5000
    """How long to wait for another process's write lock before failing."""

    @classmethod
    def from_url(cls, url: str) -> SqliteOptions:
        """Parse ``sqlite:///relative.db`` / ``sqlite:////absolute.db?synchronous=NORMAL``.

        Raises:
            EventLogArgumentError: not a sqlite URL, no path, or an unknown or bad parameter.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqlite":
            raise EventLogArgumentError(f"{url!r} is not a sqlite:// URL")
        if parts.netloc:
            raise EventLogArgumentError(
                f"{url!r}: a sqlite URL has no host; write sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise EventLogArgumentError(f"{url!r} names no database file (sqlite:///PATH)")
        if path == ":memory:" or "mode=memory" in parts.query:
            raise EventLogArgumentError("an in-memory SQLite log cannot be shared by its connections; use memory://")
        synchronous, busy_timeout_ms = "FULL", 5000
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "synchronous":
                synchronous = value.upper()
                if synchronous not in _SYNCHRONOUS:
                    raise EventLogArgumentError(f"{url!r}: synchronous={value!r}; use one of {', '.join(_SYNCHRONOUS)}")
            elif key == "busy_timeout":
                if not value.isdigit():
                    raise EventLogArgumentError(f"{url!r}: busy_timeout={value!r} is not a number of milliseconds")
                busy_timeout_ms = int(value)
            else:
                raise EventLogArgumentError(f"{url!r}: unknown parameter {key!r} (known: synchronous, busy_timeout)")
        return cls(path=path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)


@dataclass
class _Append:
    """One caller's append, queued for the writer thread."""

    stream_id: str
    events: Sequence[CloudEvent]
    contents: list[tuple[bytes, bytes]] | None
    """Each event's canonical content and its digest (``encode_contents``), made by the caller
    for an append of up to _INSERT_ROWS events; None for a longer one."""
    expected_version: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[CloudEvent] | _Placed]


@dataclass
class _Placed:
    """Where the writer put an append: the caller builds the stored records from it."""

    stream_id: str
    position: int
    """Of the first event."""
    version: int
    """Of the first event."""
    prevhash: bytes
    """Of the first event (hex, as the writer keeps hashes)."""
    hashes: list[bytes]

    def records(self, events: Sequence[CloudEvent]) -> list[CloudEvent]:
        return placed_records(
            events,
            stream_id=self.stream_id,
            version=self.version,
            position=self.position,
            prevhash=self.prevhash,
            hashes=self.hashes,
        )


@dataclass
class _Call:
    """Work that needs the writer's connection (it belongs to the writer thread alone)."""

    work: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP: Final = object()
_Outcome = tuple[_Append, list[CloudEvent] | _Placed | None, BaseException | None]
"""An append with its stored records or its error."""


class SqliteEventLog(GroupCommitStats, EventLog):
    """The event log in one SQLite file; open it with ``await SqliteEventLog.open(url)``."""

    def __init__(
        self, url: str, options: SqliteOptions, writer: sqlite3.Connection, *, max_event_bytes: int | None = None
    ) -> None:
        self.url = url
        self.options = options
        self.max_event_bytes = resolve_max_event_bytes(max_event_bytes)
        self._con = writer
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._closed = False
        # State below belongs to the writer thread only. Hashes are kept as hex bytes, the
        # form chain.seal_content takes and returns.
        self._streams: dict[str, tuple[int, bytes]] = {}
        self._next_position: int | None = None
        self._data_version = writer.execute("PRAGMA data_version").fetchone()[0]
        self._transactions = 0
        self._writer_cpu = 0.0
        self._inserter_cpu = 0.0
        self._appends = 0
        # Readers.
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="nexus-eventlog-read")
        # Subscribers waiting for a commit.
        self._waiters: dict[asyncio.Future[None], frozenset[str] | None] = {}
        """Each waiting subscriber and the types it follows (None: every type)."""
        self._waiters_lock = threading.Lock()
        # Commits announced to and by the other processes using the file (else: polling).
        self._wake = WakeChannel(options.path)
        self._watched: bool | None = None
        # Runs the insert statements of long appends while the writer seals the next chunk.
        self._inserter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nexus-eventlog-insert")
        self._writer = threading.Thread(target=self._write_loop, name="nexus-eventlog-writer", daemon=True)
        self._writer.start()

    @classmethod
    async def open(cls, url: str, *, max_event_bytes: int | None = None) -> SqliteEventLog:
        """Open (creating if needed) the log file named by ``url``.

        ``max_event_bytes``: the per-event size limit (default: ``NEXUS_MAX_EVENT_BYTES``, else 512 KiB).

        Raises:
            EventLogArgumentError: the URL or the limit is malformed.
            EventLogUnavailableError: the file cannot be opened, is not a Nexus log, or was
                written by a newer schema.
        """
        options = SqliteOptions.from_url(url)
        limit = resolve_max_event_bytes(max_event_bytes)
        writer = await asyncio.to_thread(_open_writer, options)
        return cls(url, options, writer, max_event_bytes=limit)

    # ---- statistics (beside GroupCommitStats': each transaction is one fsync under synchronous=FULL)

    @property
    def writer_cpu_seconds(self) -> float:
        """CPU time the writer thread spent on transactions (sealing, SQLite, settling); waits excluded."""
        return self._writer_cpu

    @property
    def inserter_cpu_seconds(self) -> float:
        """CPU time the inserter thread spent running long appends' INSERT statements."""
        return self._inserter_cpu

    # ---- writing ----------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[CloudEvent], expected_version: int = ANY
    ) -> list[CloudEvent]:
        self._check_open()
        check_append(stream_id, events, expected_version)
        events = list(events)
        # A short append is encoded and digested here, not in the writer: the writer's work
        # is what every concurrent append waits for, and this part does not depend on the
        # event's place. A longer one is encoded by the writer chunk by chunk, while its
        # previous chunk is being inserted (see _write_rows).
        contents = (
            encode_contents(events, stream_id=stream_id, limit=self.max_event_bytes)
            if len(events) <= _INSERT_ROWS
            else None
        )
        loop = asyncio.get_running_loop()
        request = _Append(stream_id, events, contents, expected_version, loop, loop.create_future())
        with self._submit_lock:
            # Under the lock so no append can slip in behind close()'s stop marker and hang.
            self._check_open()
            self._queue.put(request)
        # If the caller is cancelled here the append may still be committed, as with any store.
        result = await request.future
        if isinstance(result, _Placed):
            return result.records(events)
        return result

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            group: list[_Append] = []
            size = 0
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                    break
                if isinstance(item, _Call):
                    self._run_call(item)
                else:
                    group.append(item)
                    size += len(item.events)
                if size >= _MAX_EVENTS_PER_TRANSACTION:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if group:
                started = time.thread_time()
                outcomes = self._commit_group(group)
                self._settle(outcomes)
                self._writer_cpu += time.thread_time() - started
                self._wake_subscribers(outcomes)
                # Readable now: tell the other processes' subscribers.
                self._wake.notify()

    def _run_call(self, call: _Call) -> None:
        result, error = None, None
        try:
            result = call.work(self._con)
        except sqlite3.Error as exc:
            error = EventLogUnavailableError(f"the event log store failed: {exc}")
        with contextlib.suppress(RuntimeError):
            call.loop.call_soon_threadsafe(_resolve, call.future, result, error)

    async def pragmas(self) -> dict[str, Any]:
        """The writing connection's ``journal_mode``, ``synchronous`` (as a name) and ``busy_timeout``."""

        def work(con: sqlite3.Connection) -> dict[str, Any]:
            synchronous = con.execute("PRAGMA synchronous").fetchone()[0]
            return {
                "journal_mode": con.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": {v: k for k, v in _SYNCHRONOUS.items()}.get(synchronous, str(synchronous)),
                "busy_timeout": con.execute("PRAGMA busy_timeout").fetchone()[0],
            }

        self._check_open()
        loop = asyncio.get_running_loop()
        call = _Call(work, loop, loop.create_future())
        with self._submit_lock:
            self._check_open()
            self._queue.put(call)
        pragmas: dict[str, Any] = await call.future
        return pragmas

    def _commit_group(self, group: list[_Append]) -> list[_Outcome]:
        """Commit every append of ``group`` that succeeds in one transaction."""
        con = self._con
        outcomes: list[_Outcome] = []
        pending: dict[str, tuple[int, bytes]] = {}
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                self._notice_other_writers()
                for request in group:
                    if request.future.cancelled():
                        continue
                    # An append of up to _INSERT_ROWS events is ONE insert statement, which
                    # SQLite undoes by itself when it fails (ON CONFLICT ABORT backs out the
                    # statement and keeps the transaction). Longer ones need a savepoint;
                    # skipping it for the rest saves two statements per single-event append.
                    savepoint = len(request.events) > _INSERT_ROWS
                    if savepoint:
                        con.execute("SAVEPOINT append")
                    next_position = self._next_position
                    before = pending.get(request.stream_id)
                    try:
                        stored = self._apply(request, pending, savepoint)
                    except Exception as exc:
                        if savepoint:
                            con.execute("ROLLBACK TO append")
                            con.execute("RELEASE append")
                        elif not con.in_transaction:
                            raise  # the store rolled the whole transaction back (I/O error, full disk)
                        self._next_position = next_position
                        if before is None:
                            pending.pop(request.stream_id, None)
                        else:
                            pending[request.stream_id] = before
                        outcomes.append((request, None, _translate(exc)))
                    else:
                        if savepoint:
                            con.execute("RELEASE append")
                        outcomes.append((request, stored, None))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except Exception as exc:
            # The transaction as a whole failed: nothing of the group is stored, and verdicts
            # reached against its uncommitted state no longer hold, so every append fails.
            self._streams.clear()
            self._next_position = None
            failure = _translate(exc)
            if not isinstance(failure, EventLogUnavailableError):
                failure = EventLogUnavailableError(f"the write transaction failed: {exc}")
            return [(request, None, failure) for request in group]
        self._transactions += 1
        self._appends += len(outcomes)
        remember_streams(self._streams, pending, _STREAM_CACHE_SIZE)
        return outcomes

    def _notice_other_writers(self) -> None:
        """Drop cached stream state if another connection (another process) wrote the file."""
        data_version = self._con.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self._data_version:
            self._data_version = data_version
            self._streams.clear()
            self._next_position = None
            # Whatever types it stored, a subscriber may follow them: every one looks.
            self._wake_subscribers()
        if self._next_position is None:
            self._next_position = self._con.execute("SELECT coalesce(max(position), 0) + 1 FROM events").fetchone()[0]

    def _stored_state(self, stream_id: str) -> tuple[int, bytes]:
        """The stream's last version and hash as stored ((0, genesis) when it does not exist)."""
        row = self._con.execute(
            "SELECT version, body FROM events WHERE stream_id = ? ORDER BY version DESC LIMIT 1", (stream_id,)
        ).fetchone()
        return (0, GENESIS) if row is None else (row[0], last_hash(row[1]))

    def _apply(
        self, request: _Append, pending: dict[str, tuple[int, bytes]], savepoint: bool
    ) -> list[CloudEvent] | _Placed:
        """Write one append (in the open savepoint, if ``savepoint``).

        Returns where it went, or the stored records when it is a retry.
        """
        stream_id = request.stream_id
        state = pending.get(stream_id) or self._streams.get(stream_id)
        if state is not None:
            return self._place(request, pending, savepoint, state)
        if savepoint or request.expected_version not in (ANY, NO_STREAM, 0):
            return self._place(request, pending, savepoint, self._stored_state(stream_id))
        # A stream missing from the cache is most often a new one (a new order, a new
        # workflow), so a short append that accepts a new stream is written as its first
        # events without looking first: the query is a fifth of the statements of such an
        # append. If the stream exists after all, the (stream_id, version) index refuses
        # version 1, SQLite undoes the statement, and the append is placed again after the
        # stream's stored last event.
        try:
            return self._place(request, pending, savepoint, (0, GENESIS), guessed=True)
        except sqlite3.IntegrityError:
            # The stream exists, or another conflict (a used id), which the second attempt
            # meets again and decides as any append does.
            return self._place(request, pending, savepoint, self._stored_state(stream_id))

    def _place(
        self,
        request: _Append,
        pending: dict[str, tuple[int, bytes]],
        savepoint: bool,
        state: tuple[int, bytes],
        *,
        guessed: bool = False,
    ) -> list[CloudEvent] | _Placed:
        """Write the append after ``state``, the stream's last version and hash.

        ``guessed``: ``state`` is the unchecked guess that the stream is new, so an
        IntegrityError is raised as it is, for ``_apply`` to place the append again.
        """
        stream_id, events = request.stream_id, request.events
        version, prevhash = state
        try:
            check_expected(stream_id, request.expected_version, version)
        except ConcurrencyError:
            # A retry of an append that already went through is answered, not refused.
            stored = self._lookup_stored(stream_id, events)
            if stored is not None:
                return stored
            raise
        position = self._next_position
        assert position is not None
        placed = _Placed(stream_id, position, version + 1, prevhash, [])
        try:
            self._write_rows(request, placed)
        except sqlite3.IntegrityError:
            # Most likely an id that is already stored: undo the rows written so far (a lone
            # statement undid its own) and decide between "a retry" and "a different event
            # under a used id".
            if savepoint:
                self._con.execute("ROLLBACK TO append")
            if guessed:
                raise  # perhaps the stream exists: _apply reads it and places the append again
            stored = self._lookup_stored(stream_id, events)
            if stored is not None:
                return stored
            raise
        self._next_position = position + len(events)
        pending[stream_id] = (version + len(events), placed.hashes[-1])
        return placed

    def _write_rows(self, request: _Append, placed: _Placed) -> None:
        """Seal the append's events and insert them, _INSERT_ROWS per statement.

        A longer append runs as a pipeline: while the inserter thread executes chunk k's
        statement on this connection (SQLite releases the GIL while it steps), this thread
        encodes and seals chunk k+1 (Python, holding the GIL). The two never use the
        connection at the same time: chunk k+1's statement starts after chunk k's returned.
        """
        con, stream_id, events = self._con, request.stream_id, request.events
        stream_key = _json.encode(stream_id)
        position, version, prevhash, hashes = placed.position, placed.version, placed.prevhash, placed.hashes
        in_flight: concurrent.futures.Future[Any] | None = None
        try:
            for start in range(0, len(events), _INSERT_ROWS):
                chunk = events[start : start + _INSERT_ROWS]
                contents = (
                    encode_contents(chunk, stream_id=stream_id, limit=self.max_event_bytes, first_index=start)
                    if request.contents is None
                    else request.contents[start : start + _INSERT_ROWS]
                )
                flat: list[Any] = []
                sealed = seal_run(
                    contents, stream_key=stream_key, version=version, position=position, prevhash=prevhash
                )
                for event, (hash_, body) in zip(chunk, sealed, strict=True):
                    flat += (position, stream_id, version, event.id, event.type, body)
                    hashes.append(hash_)
                    position += 1
                    version += 1
                prevhash = hashes[-1]
                statement = _INSERT_MANY if len(chunk) == _INSERT_ROWS else _insert_statement(len(chunk))
                if in_flight is not None:
                    in_flight.result()  # the previous chunk's error surfaces here
                if len(events) <= _INSERT_ROWS:
                    con.execute(statement, flat)  # one chunk: nothing to overlap with
                else:
                    in_flight = self._inserter.submit(self._insert_chunk, statement, flat)
            if in_flight is not None:
                in_flight.result()
        finally:
            if in_flight is not None:
                # Sealing failed meanwhile: the connection is ours again only once it returns.
                concurrent.futures.wait([in_flight])

    def _insert_chunk(self, statement: str, args: list[Any]) -> None:
        """Run on the inserter thread, which alone updates its CPU counter."""
        started = time.thread_time()
        try:
            self._con.execute(statement, args)
        finally:
            self._inserter_cpu += time.thread_time() - started

    def _lookup_stored(self, stream_id: str, events: Sequence[CloudEvent]) -> list[CloudEvent] | None:
        by_id: dict[str, CloudEvent] = {}
        ids = [e.id for e in events]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self._con.execute(
                f"SELECT body FROM events WHERE event_id IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            for event in decode_bodies([r[0] for r in rows]):
                by_id[event.id] = event
        return match_stored(stream_id, events, [by_id.get(i) for i in ids])

    def _settle(self, outcomes: list[_Outcome]) -> None:
        # One wake-up per event loop, not per append: each call_soon_threadsafe writes to the
        # loop's self-pipe and contends for the GIL with the loop it wakes.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
                loop.call_soon_threadsafe(_resolve_all, settled)

    # ---- reading ----------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = _connect(self.options)
            con.execute("PRAGMA query_only = ON")
            con.text_factory = bytes  # group_concat yields TEXT; take its UTF-8 bytes as they are
            self._local.con = con
            with self._readers_lock:
                self._readers.append(con)
        return con

    def _in_reader(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` on this read thread's connection (called in a read thread)."""
        try:
            return work(self._reader())
        except sqlite3.Error as exc:
            raise EventLogUnavailableError(f"reading the event log failed: {exc}") from None

    def _submit(self, fn: Callable[..., _T], *args: Any) -> concurrent.futures.Future[_T]:
        self._check_open()
        try:
            return self._executor.submit(fn, *args)
        except RuntimeError:  # the executor was shut down by close()
            raise EventLogClosedError("the event log is closed") from None

    async def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.wrap_future(self._submit(self._in_reader, work))

    async def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> list[CloudEvent]:
        check_position("from_version", from_version)
        check_limit(limit)

        def work(con: sqlite3.Connection) -> list[CloudEvent]:
            rows = con.execute(
                "SELECT body FROM events WHERE stream_id = ? AND version >= ? ORDER BY version LIMIT ?",
                (stream_id, from_version, -1 if limit is None else limit),
            ).fetchall()
            return decode_bodies([r[0] for r in rows])

        return await self._read(work)

    async def read_all(
        self, from_position: int = 0, limit: int | None = None, types: Iterable[str] | None = None
    ) -> list[CloudEvent]:
        check_position("from_position", from_position)
        check_limit(limit)
        wanted = check_types(types)
        if wanted is not None and not wanted:
            return []
        # One single-statement read is one snapshot, and the one writer assigns positions in
        # commit order, so a page never has a hole that a later commit could fill.
        where, args = "position >= ?", list[object]([from_position])
        if wanted is not None:
            where += f" AND type IN ({','.join('?' * len(wanted))})"
            args += sorted(wanted)
        args.append(-1 if limit is None else limit)
        return await self._read(lambda con: _decode_fetched(_fetch_page(con, where, args)[0]))

    async def iter_all(
        self, from_position: int = 0, *, types: Iterable[str] | None = None, batch_size: int = 5000
    ) -> AsyncIterator[list[CloudEvent]]:
        """Batches of ``read_all``, read in pages fetched one ahead of the page being decoded.

        Fetching a page (SQLite builds its JSON array and releases the GIL while it steps) and
        decoding one (msgspec, holding the GIL) take the same order of time, so they run side
        by side in two read threads: while page k is decoded, page k+1 is read. Pages hold at
        most ``_REPLAY_PAGE`` events (a batch may join several): a page's JSON and its
        envelopes then stay in the CPU caches, which measured faster than bigger pages. At
        most one page waits undecoded, so memory stays bounded.
        """
        check_position("from_position", from_position)
        check_batch_size(batch_size)
        wanted = check_types(types)
        if wanted is not None and not wanted:
            return
        where = "position >= ?"
        if wanted is not None:
            where += f" AND type IN ({','.join('?' * len(wanted))})"
        extra = sorted(wanted) if wanted is not None else []

        def fetch(position: int, limit: int) -> tuple[bytes | None, int, int]:
            return self._in_reader(lambda con: _fetch_page(con, where, [position, *extra, limit]))

        def decode(payload: bytes) -> list[CloudEvent]:
            return self._in_reader(lambda _: _decode_fetched(payload))

        batch: list[CloudEvent] = []
        ahead = self._submit(fetch, max(from_position, 1), min(batch_size, _REPLAY_PAGE))
        try:
            while True:
                payload, last, count = await asyncio.wrap_future(ahead)
                if payload is None:
                    if batch:
                        yield batch
                    return
                room = batch_size - len(batch) - count
                ahead = self._submit(fetch, last + 1, min(room or batch_size, _REPLAY_PAGE))
                page = await asyncio.wrap_future(self._submit(decode, payload))
                batch = page if not batch else batch + page
                if not room:
                    yield batch
                    batch = []
        finally:
            # A consumer that stops early leaves one read in flight: let it finish unobserved.
            if not ahead.cancel() and ahead.done():
                ahead.exception()

    async def head(self) -> int:
        return await self._read(lambda con: con.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0])

    async def stream_version(self, stream_id: str) -> int:
        return await self._read(
            lambda con: con.execute(
                "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
            ).fetchone()[0]
        )

    async def get_event(self, event_id: str) -> CloudEvent | None:
        def work(con: sqlite3.Connection) -> CloudEvent | None:
            row = con.execute("SELECT body FROM events WHERE event_id = ?", (event_id,)).fetchone()
            return None if row is None else decode_bodies([row[0]])[0]

        return await self._read(work)

    async def subscribe(
        self, from_position: int = 0, *, types: Iterable[str] | None = None
    ) -> AsyncIterator[CloudEvent]:
        check_position("from_position", from_position)
        wanted = check_types(types)
        names = sorted(wanted) if wanted is not None else []
        position = max(from_position, 1)
        if self._watched is None:
            # Another process's commit wakes every subscriber: its types are not known here.
            self._watched = self._wake.watch(self._wake_subscribers)
        poll = _WATCHED_POLL_S if self._watched else _EXTERNAL_POLL_S
        while True:
            self._check_open()
            # Registered before reading, so a commit between the read and the wait wakes us.
            waiter = self._add_waiter(wanted)
            try:
                if wanted is None:
                    batch, following, more = await unfiltered_page(self, position, _SUBSCRIBE_PAGE)
                else:
                    batch, following, more = await self._read(
                        functools.partial(_scan_types, types=names, position=position)
                    )
                position = following
                for event in batch:
                    yield event
                if more:
                    continue
                # Another process may append to the same file: its commits wake us through
                # the watch; a look now and then is the fallback.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await asyncio.shield(waiter)
            finally:
                self._drop_waiter(waiter)

    def _add_waiter(self, types: frozenset[str] | None) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._waiters_lock:
            self._waiters[waiter] = types
        return waiter

    def _drop_waiter(self, waiter: asyncio.Future[None]) -> None:
        with self._waiters_lock:
            self._waiters.pop(waiter, None)

    def _wake_subscribers(self, committed: list[_Outcome] | None = None) -> None:
        """Wake the subscribers a commit concerns: those following every type, and those
        following a type of an event ``committed`` stored (None: every subscriber, at close).

        Why: a service's triggers follow a few types of a log that commits hundreds of times a
        second; waking them for each commit would cost a thread hop and a query per commit for
        nothing. A subscriber left asleep loses nothing: its next read starts where it stood
        and, through the type index, reads the matching rows only.
        """
        with self._waiters_lock:
            if committed is None or all(types is None for types in self._waiters.values()):
                woken = list(self._waiters)
                self._waiters = {}
            else:
                stored = {event.type for request, _, error in committed if error is None for event in request.events}
                woken = [w for w, types in self._waiters.items() if types is None or not types.isdisjoint(stored)]
                for waiter in woken:
                    del self._waiters[waiter]
        for waiter in woken:
            with contextlib.suppress(RuntimeError):
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter, None, None)

    # ---- lifecycle --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogClosedError("the event log is closed")

    async def close(self) -> None:
        """Finish the appends already queued, then release the file."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        await asyncio.to_thread(self._writer.join)
        self._inserter.shutdown(wait=False)  # idle: the writer waits for every insert it submits
        self._wake.close()
        self._wake_subscribers()
        await asyncio.to_thread(self._executor.shutdown, True)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for con in [*readers, self._con]:
            con.close()


def _fetch_page(con: sqlite3.Connection, where: str, args: Sequence[Any]) -> tuple[bytes | None, int, int]:
    """The page as one JSON array built inside SQLite (no Python object per row), its last position and size.

    Returns (None, 0, 0) for an empty page. One statement is one snapshot.
    """
    row = con.execute(
        "SELECT '[' || group_concat(body, ',') || ']', max(position), count(*) FROM "
        f"(SELECT position, body FROM events WHERE {where} ORDER BY position LIMIT ?)",
        args,
    ).fetchone()
    return (None, 0, 0) if row[0] is None else row


def _scan_types(con: sqlite3.Connection, *, types: list[str], position: int) -> tuple[list[CloudEvent], int, bool]:
    """A filtered subscription's next page: the matching events, where the next read starts, and
    whether it should start at once (more of the log is known to be there) or wait for a commit.

    One statement, so the matches and the head come from one snapshot: when the page is not
    full, every event up to that head has been looked at and none after the last match is
    wanted, so the next read starts past the head. The scan covers at most ``_SCAN_WINDOW``
    positions: over a long backlog of common types, SQLite merges the types' index ranges
    through a sort of every match in range, so an unbounded range would cost each page the
    whole backlog.
    """
    end = position + _SCAN_WINDOW
    marks = ",".join("?" * len(types))
    payload, last, count, head = con.execute(
        "SELECT '[' || group_concat(body, ',') || ']', max(position), count(*), "
        "(SELECT coalesce(max(position), 0) FROM events) FROM "
        f"(SELECT position, body FROM events WHERE position >= ? AND position < ? AND type IN ({marks}) "
        "ORDER BY position LIMIT ?)",
        [position, end, *types, _SUBSCRIBE_PAGE],
    ).fetchone()
    events = _decode_fetched(payload)
    return after_scan(events, full=count >= _SUBSCRIBE_PAGE, last=last, position=position, end=end, head=head)


def _decode_fetched(payload: bytes | None) -> list[CloudEvent]:
    """A page from ``_fetch_page`` as envelopes, in position order."""
    if payload is None:
        return []
    events = decode_page(payload)
    # group_concat keeps the subquery's order in practice but SQLite does not promise it.
    if any((a.position or 0) >= (b.position or 0) for a, b in itertools.pairwise(events)):
        events.sort(key=lambda e: e.position or 0)
    return events


@functools.lru_cache(maxsize=_INSERT_ROWS)
def _insert_statement(rows: int) -> str:
    return _INSERT_PREFIX + ",".join(["(?, ?, ?, ?, ?, ?)"] * rows)


def _resolve_all(outcomes: list[_Outcome]) -> None:
    for request, stored, error in outcomes:
        _resolve(request.future, stored, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _translate(exc: BaseException) -> BaseException:
    """The log's own errors pass through; SQLite's become EventLogUnavailableError."""
    if isinstance(exc, EventLogError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return EventLogUnavailableError(f"the event log store refused the append: {exc}")
    return exc


def _connect(options: SqliteOptions) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE, SAVEPOINT).
    con = sqlite3.connect(
        options.path, isolation_level=None, check_same_thread=False, timeout=options.busy_timeout_ms / 1000
    )
    con.execute(f"PRAGMA busy_timeout = {options.busy_timeout_ms}")
    return con


def _open_writer(options: SqliteOptions) -> sqlite3.Connection:
    try:
        make_private_dir(Path(options.path).parent, tighten_existing=False)
        create_private_file(options.path)
        con = _connect(options)
    except (OSError, sqlite3.Error) as exc:
        raise EventLogUnavailableError(f"cannot open the event log file {options.path!r}: {exc}") from None
    try:
        # For a new file only (an existing one keeps its page size): 1000-event transactions
        # insert ~20% faster with 8 KiB pages than with 4 KiB ones (fewer index page splits
        # and WAL frames per row).
        con.execute("PRAGMA page_size = 8192")
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise EventLogUnavailableError(f"{options.path!r}: SQLite refused WAL mode (it reports {mode!r})")
        con.execute(f"PRAGMA synchronous = {options.synchronous}")
        # A big page cache keeps a large batch's index pages in memory until the commit.
        con.execute("PRAGMA cache_size = -65536")
        con.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            con.execute(statement)
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
        if row[0] is None:
            con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise EventLogUnavailableError(
                f"{options.path!r} has event log schema version {row[0]}; this Nexus reads up to {SCHEMA_VERSION}"
            )
        elif row[0] < SCHEMA_VERSION:
            raise EventLogUnavailableError(
                f"{options.path!r} has event log schema version {row[0]}, written by a development version of "
                f"Nexus that hashed events differently; this Nexus reads version {SCHEMA_VERSION} (start a new file)"
            )
        con.execute("COMMIT")
    except sqlite3.Error as exc:
        con.close()
        raise EventLogUnavailableError(f"{options.path!r} is not a usable event log: {exc}") from None
    except BaseException:
        con.close()
        raise
    return con


__all__ = ["SCHEMA_VERSION", "SqliteEventLog", "SqliteOptions"]
