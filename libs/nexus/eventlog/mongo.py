"""``mongodb://HOST/DB``: the production event log, through PyMongo's asyncio API.

MongoDB transactions need a **replica set** (or a sharded cluster): a standalone ``mongod``
is refused at open with a message saying so. For a single machine, start
``mongod --replSet rs0`` and run ``rs.initiate()`` once.

Layout, in the URL's database (``nexus`` when the URL names none):

* ``events``: one document per event, ``_id`` = position, with ``stream_id``, ``version``,
  ``event_id``, ``type`` and ``body`` (the event's JSON, as stored and hashed). Unique
  indexes on (``stream_id``, ``version``) and on ``event_id``; (``type``, ``_id``) for filters.
* ``counters``: ``{_id: "position", value: N}``, the last position handed out.

**Group commit.** One writer task per open log takes every queued append and commits them in
ONE multi-document transaction, begun with read concern ``snapshot`` and write concern
``majority`` + journal given to the transaction itself (``start_transaction``: concerns set on
the database object are not inherited by a transaction, which would otherwise commit with the
client's default). The transaction (1) looks up the group's event ids (idempotency) and the
last event of each stream it has not cached, (2) decides each append on its own (a
ConcurrencyError or DuplicateEventError fails that append alone), (3) only then increments the
position counter, (4) inserts the placed events and (5) commits. Because every append writes
the counter, any append committed after the transaction's snapshot makes the counter's update
fail with a WriteConflict (TransientTransactionError), and the group is decided again on a new
snapshot: the reads cannot be stale for a committed append. Taking the counter last means a
transaction holds it for two round trips (the insert and the commit), not for all of them, so
writers in other processes collide less. An aborted transaction returns its positions (no gap).
The writer caches each stream's last version and hash; the cache is trusted only when the
counter, as the transaction increments it, is where this log's last commit left it (no other
writer committed since), and otherwise the group is decided again without it.

**Bounds.** Each append has a deadline (``append_timeout_s``, 30 s by default), which bounds
the driver's work (``pymongo.timeout``) and the conflict retries. An append whose encoded
events exceed ``MAX_APPEND_BYTES`` or that holds more than ``MAX_APPEND_EVENTS`` events is
refused before anything is sent (one transaction carries it whole, and MongoDB advises keeping
transactions small); an event larger than a BSON document can hold is refused as
EventTooLargeError. A failure after the commit was sent (the connection dropped, the majority
did not acknowledge before the deadline) raises AppendOutcomeUnknownError: the append may be
stored, and a retry with the same event ids returns it if it is, or writes it if it is not.

Readers never trust the order in which documents become visible: a read first takes the
counter (majority-committed) as its watermark, then reads events at or below it in the same
causally consistent session, so a position is only served once every lower one is committed;
a hole below the watermark is waited for and never skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from nexus.eventlog import chain
from nexus.eventlog._codec import decode_bodies
from nexus.eventlog._common import (
    GroupCommitStats,
    QueuedAppend,
    check_append,
    check_expected,
    check_limit,
    check_position,
    check_types,
    encode_contents,
    match_stored,
    remember_streams,
    resolve_max_event_bytes,
    settle,
    stored_size,
    unfiltered_page,
)
from nexus.eventlog._errors import (
    AppendOutcomeUnknownError,
    EventLogArgumentError,
    EventLogClosedError,
    EventLogError,
    EventLogUnavailableError,
    EventTooLargeError,
)
from nexus.eventlog._port import ANY, GENESIS_HASH, EventLog
from nexus.proto import CloudEvent

try:
    import pymongo
    from bson.binary import Binary
    from bson.errors import InvalidDocument
    from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
    from pymongo.errors import (
        BulkWriteError,
        ConfigurationError,
        DocumentTooLarge,
        DuplicateKeyError,
        OperationFailure,
        PyMongoError,
    )
    from pymongo.read_concern import ReadConcern
    from pymongo.write_concern import WriteConcern
except ImportError:  # pragma: no cover - pymongo is a declared dependency
    AsyncMongoClient = None  # type: ignore[assignment,misc]  # pymongo missing: refused at open

REPLICA_SET_NEEDED: Final = (
    "the MongoDB event log needs a replica set (multi-document transactions): start mongod with "
    "--replSet rs0, run rs.initiate() once, and connect to it"
)
MAX_APPEND_EVENTS: Final = 10_000
"""The most events one append (and one group commit) carries in its transaction."""
MAX_APPEND_BYTES: Final = 16 * 1024 * 1024
"""The most encoded event bytes one append (and one group commit) carries in its transaction:
well under what MongoDB keeps in cache for one transaction, and the size a whole transaction
was held to before MongoDB 4.2."""
DEFAULT_APPEND_TIMEOUT_S: Final = 30.0
"""How long an append may take, queued and committed, before it fails (MongoDB aborts a
transaction that runs for longer than ``transactionLifetimeLimitSeconds``, 60 s by default)."""
_BSON_MAX_DEFAULT: Final = 16 * 1024 * 1024
"""``maxBsonObjectSize`` of every MongoDB release; the server's own value is taken at open."""
_DOCUMENT_OVERHEAD: Final = 1024
"""Room in an event's document for its fields other than the body (ids, type, version)."""
_COUNTER_ID: Final = "position"
_GAP_WAIT_S: Final = 5.0
"""How long a read waits for a hole below the watermark before reporting the store damaged."""
_POLL_MIN_S: Final = 0.02
_POLL_MAX_S: Final = 0.5
_SUBSCRIBE_PAGE: Final = 1000
_SETTLE_GRACE_S: Final = 5.0
"""How much longer than its deadline a caller waits for the writer to settle its append."""
_BACKOFF_INITIAL_S: Final = 0.005
_BACKOFF_MAX_S: Final = 0.5
_STREAM_CACHE_SIZE: Final = 10_000
_SERVER_LIMIT = re.compile(r"up to (\d+) bytes")


@dataclass
class _Append(QueuedAppend):
    """One caller's append, queued for the writer task, with what bounds it."""

    size: int
    """The append's stored size (an upper bound), counted against ``MAX_APPEND_BYTES``."""
    deadline: float
    """Event-loop time by which the append must be settled."""
    taken: bool = False
    """The writer took it into a transaction: from then on it may be committed."""


_Outcome = tuple[_Append, list[CloudEvent] | None, BaseException | None]


@dataclass
class _Group:
    """One transaction's decisions: the documents to insert and each append's outcome."""

    docs: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[_Outcome] = field(default_factory=list)
    pending: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Each written stream's last version and hash once the transaction commits."""
    deferred: list[_Append] = field(default_factory=list)
    """Appends sharing an event id with an earlier one of the group: decided in the next group."""
    written: list[_Append] = field(default_factory=list)
    """The appends whose events the transaction inserts."""
    head: int = 0
    """The counter after the commit (when ``docs`` is not empty)."""


class MongoEventLog(GroupCommitStats, EventLog):
    """The event log in a MongoDB replica set; open it with ``await MongoEventLog.open(url)``."""

    def __init__(
        self,
        url: str,
        client: Any,
        database: str,
        *,
        max_event_bytes: int | None = None,
        append_timeout_s: float = DEFAULT_APPEND_TIMEOUT_S,
        max_document_bytes: int = _BSON_MAX_DEFAULT,
    ) -> None:
        self.url = url
        # An event is one document: no larger than the server's BSON limit, whatever the setting.
        self.max_event_bytes = min(resolve_max_event_bytes(max_event_bytes), max_document_bytes - _DOCUMENT_OVERHEAD)
        self.append_timeout_s = append_timeout_s
        self._client = client
        # The database's concerns serve the reads outside transactions; a transaction does not
        # inherit them, so each is begun with its own (see _attempt).
        self._db = client.get_database(
            database,
            write_concern=WriteConcern(w="majority", j=True),
            read_concern=ReadConcern("majority"),
        )
        self._events = self._db["events"]
        self._counters = self._db["counters"]
        self._closed = False
        self._changed = asyncio.Event()
        # Writer state (the writer task alone touches it).
        self._queue: collections.deque[_Append] = collections.deque()
        self._wakeup = asyncio.Event()
        self._streams: dict[str, tuple[int, str]] = {}
        self._cached_head: int | None = None
        """The counter as this log's last commit left it: the stream cache holds while it still is."""
        self._transactions = 0
        self._appends = 0
        self._conflicts = 0
        self._writer = asyncio.create_task(self._write_loop(), name="nexus-eventlog-mongo-writer")

    @classmethod
    async def open(
        cls, url: str, *, max_event_bytes: int | None = None, append_timeout_s: float = DEFAULT_APPEND_TIMEOUT_S
    ) -> MongoEventLog:
        """Connect, check that the server is a replica set, and create the indexes.

        ``max_event_bytes``: the per-event size limit (default: ``NEXUS_MAX_EVENT_BYTES``, else 512 KiB).
        ``append_timeout_s``: how long one append may take, queued and committed.

        Raises:
            EventLogArgumentError: the URL or the limit is malformed.
            EventLogUnavailableError: the server does not answer, or is not a replica set.
        """
        if AsyncMongoClient is None:  # pragma: no cover
            raise EventLogUnavailableError("pymongo is not installed")
        limit = resolve_max_event_bytes(max_event_bytes)
        parts = urlsplit(url)
        if not parts.netloc:
            raise EventLogArgumentError(f"{url!r}: give a host, e.g. mongodb://localhost:27017/nexus?replicaSet=rs0")
        database = parts.path.lstrip("/") or "nexus"
        try:
            # Fail fast when the server is down, unless the URL chooses its own timeout.
            defaults: dict[str, Any] = (
                {} if "serverselectiontimeoutms" in parts.query.lower() else {"serverSelectionTimeoutMS": 5000}
            )
            client: Any = AsyncMongoClient(url, **defaults)
        except ConfigurationError as exc:
            raise EventLogArgumentError(f"{url!r} is not a usable MongoDB URL: {exc}") from None
        try:
            return await cls.on_client(url, client, database, max_event_bytes=limit, append_timeout_s=append_timeout_s)
        except BaseException:
            await client.close()
            raise

    @classmethod
    async def on_client(
        cls,
        url: str,
        client: Any,
        database: str,
        *,
        max_event_bytes: int | None = None,
        append_timeout_s: float = DEFAULT_APPEND_TIMEOUT_S,
    ) -> MongoEventLog:
        """The log in ``database`` of a connected ``client``: checked to be a replica set, indexed.

        ``open`` calls it; a test hands it a client of its own. The caller closes ``client``
        if this fails.
        """
        host = urlsplit(url).hostname
        with _driver_errors():
            hello = await client.admin.command("hello")
            if "setName" not in hello and hello.get("msg") != "isdbgrid":
                raise EventLogUnavailableError(f"MongoDB at {host} is a standalone server; " + REPLICA_SET_NEEDED)
            log = cls(
                url,
                client,
                database,
                max_event_bytes=max_event_bytes,
                append_timeout_s=append_timeout_s,
                max_document_bytes=int(hello.get("maxBsonObjectSize", _BSON_MAX_DEFAULT)),
            )
            try:
                await log._events.create_index(
                    [("stream_id", ASCENDING), ("version", ASCENDING)], unique=True, name="stream_version"
                )
                await log._events.create_index([("event_id", ASCENDING)], unique=True, name="event_id")
                await log._events.create_index([("type", ASCENDING), ("_id", ASCENDING)], name="type_position")
                # Created outside any transaction, so appends only ever update it.
                await log._counters.update_one({"_id": _COUNTER_ID}, {"$setOnInsert": {"value": 0}}, upsert=True)
            except BaseException:
                await log._stop_writer()
                raise
        return log

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogClosedError("the event log is closed")

    # ---- statistics (beside GroupCommitStats') --------------------------------------------

    @property
    def conflicts(self) -> int:
        """Transactions retried because another writer committed first (WriteConflict)."""
        return self._conflicts

    # ---- writing ----------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[CloudEvent], expected_version: int = ANY
    ) -> list[CloudEvent]:
        self._check_open()
        check_append(stream_id, events, expected_version)
        batch = list(events)
        if len(batch) > MAX_APPEND_EVENTS:
            raise EventLogArgumentError(
                f"stream {stream_id!r}: an append of {len(batch)} events is more than one MongoDB transaction "
                f"carries: at most {MAX_APPEND_EVENTS} events per append; split it into several appends"
            )
        # Encoded (and size-checked) here, outside the writer that every concurrent append waits for.
        contents = encode_contents(batch, stream_id=stream_id, limit=self.max_event_bytes)
        size = sum(stored_size(content, stream_id) for content, _ in contents)
        if size > MAX_APPEND_BYTES:
            raise EventLogArgumentError(
                f"stream {stream_id!r}: an append of {size} bytes of events is more than one MongoDB transaction "
                f"carries: at most {MAX_APPEND_BYTES} bytes per append; split it, or store large values in Raw"
            )
        loop = asyncio.get_running_loop()
        request = _Append(
            stream_id,
            batch,
            contents,
            expected_version,
            future=loop.create_future(),
            size=size,
            deadline=loop.time() + self.append_timeout_s,
        )
        self._queue.append(request)
        self._wakeup.set()
        try:
            # The writer settles every append by its deadline; waiting longer is a safety net.
            async with asyncio.timeout(self.append_timeout_s + _SETTLE_GRACE_S):
                # Shielded: if the caller is cancelled the append may still be committed, as with any store.
                return await asyncio.shield(request.future)
        except TimeoutError:
            if not request.taken:
                request.future.cancel()  # still queued: the writer skips it, nothing is written
                raise EventLogUnavailableError(
                    f"stream {stream_id!r}: the append was not written within {self.append_timeout_s:g} s; retry it"
                ) from None
            request.future.add_done_callback(_consume)
            raise AppendOutcomeUnknownError(
                f"stream {stream_id!r}: the append's transaction did not finish within {self.append_timeout_s:g} s"
            ) from None
        except asyncio.CancelledError:
            request.future.add_done_callback(_consume)  # settled later, for nobody
            raise

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group = self._take_group()
            if not group:
                continue
            try:
                await self._commit(group)
            except Exception as exc:  # pragma: no cover - a bug; never leave a caller waiting for it
                settle([(r, None, EventLogUnavailableError(f"the append failed: {exc!r}")) for r in group])

    def _take_group(self) -> list[_Append]:
        """The queued appends that one transaction carries, oldest first."""
        group: list[_Append] = []
        count = size = 0
        while self._queue:
            request = self._queue[0]
            if request.future.done():  # its caller gave up while it was queued
                self._queue.popleft()
                continue
            if group and (count + len(request.events) > MAX_APPEND_EVENTS or size + request.size > MAX_APPEND_BYTES):
                break
            self._queue.popleft()
            request.taken = True
            group.append(request)
            count += len(request.events)
            size += request.size
        return group

    async def _commit(self, group: list[_Append]) -> None:
        """Commit ``group`` in one transaction (again, as needed) and settle every append of it."""
        settled: list[_Outcome] = []
        try:
            done = await self._transaction(group, settled)
        except EventLogError as exc:
            settle(settled + [(r, None, exc) for r in group if not any(r is s[0] for s in settled)])
            return
        for request in reversed(done.deferred):
            request.taken = False  # none of its events were in the transaction
            self._queue.appendleft(request)
        if done.deferred:
            self._wakeup.set()
        settle(settled + done.outcomes)
        if done.docs:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _transaction(self, group: list[_Append], settled: list[_Outcome]) -> _Group:
        """Run ``group``'s transaction until it commits or its earliest deadline passes.

        Appends that fail on their own (sealing failed, an event too large for a document) are
        moved from ``group`` to ``settled`` and the rest is tried again.

        Raises:
            AppendOutcomeUnknownError: the commit was sent and its outcome is unknown.
            EventLogError: nothing was written.
        """
        loop = asyncio.get_running_loop()
        deadline = min(r.deadline for r in group)
        use_cache = True
        attempt = 0
        why = "no attempt"
        while group:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if attempt:
                backoff = random.random() * min(_BACKOFF_INITIAL_S * 1.5**attempt, _BACKOFF_MAX_S)
                if remaining <= backoff:
                    break
                await asyncio.sleep(backoff)
                remaining = deadline - loop.time()
            attempt += 1
            try:
                with pymongo.timeout(remaining):
                    async with self._client.start_session() as session:
                        return await self._attempt(session, group, use_cache, deadline)
            except _StaleCache:
                # Another writer committed since our last transaction: decide on stored state.
                self._forget()
                use_cache = False
                attempt = 0
            except _Raced:
                why = "a unique index refused an insert that the transaction's snapshot said was free"
                self._forget()
            except _Refused as refused:
                settled.append((refused.request, None, refused.error))
                group.remove(refused.request)
                attempt = 0
            except _CommitUnknown as unknown:
                self._forget()
                # Appends answered without writing (a retry, a conflict) keep their verdict.
                settled.extend(o for o in unknown.done.outcomes if not any(o[0] is w for w in unknown.done.written))
                raise AppendOutcomeUnknownError(
                    f"MongoDB did not confirm the append's commit ({unknown.cause}); it may be stored: retry it "
                    "with the same event ids, which returns it if it was"
                ) from None
            except PyMongoError as exc:
                if not exc.has_error_label("TransientTransactionError"):
                    self._forget()
                    _raise_translated(exc)
                # A concurrent writer committed first (WriteConflict): decide again on a new snapshot.
                self._conflicts += 1
                why = f"concurrent writers kept conflicting ({exc})"
        if not group:
            return _Group()
        raise EventLogUnavailableError(
            f"the append was not written within {self.append_timeout_s:g} s ({why}); nothing was stored, retry it"
        )

    def _forget(self) -> None:
        self._streams.clear()
        self._cached_head = None

    async def _attempt(self, session: Any, group: list[_Append], use_cache: bool, deadline: float) -> _Group:
        """One transaction: decide every append, then take the counter, insert, and commit."""
        await session.start_transaction(
            read_concern=ReadConcern("snapshot"), write_concern=WriteConcern(w="majority", j=True)
        )
        done = _Group()
        # Round trip 1: the group's event ids already stored (a retry is answered, not written).
        ids = [e.id for r in group for e in r.events]
        docs = await self._events.find({"event_id": {"$in": ids}}, {"body": 1}, session=session).to_list()
        found = {e.id: e for e in decode_bodies([bytes(d["body"]) for d in docs])}
        # Round trip 2 (streams not cached): each stream's last version and hash.
        streams = sorted({r.stream_id for r in group})
        cached = {s: self._streams[s] for s in streams if use_cache and s in self._streams}
        state = await self._stream_states(session, [s for s in streams if s not in cached])
        state.update(cached)
        # Every append decided on the snapshot, each on its own.
        versions = {s: state.get(s, (0, GENESIS_HASH))[0] for s in streams}
        plan: list[tuple[_Append, int]] = []
        planned: set[str] = set()
        for request in group:
            request_ids = [e.id for e in request.events]
            if planned.intersection(request_ids):
                done.deferred.append(request)  # a retry beside its original: answered once that commits
                continue
            try:
                stored = match_stored(request.stream_id, request.events, [found.get(i) for i in request_ids])
                if stored is not None:
                    done.outcomes.append((request, stored, None))
                    continue
                check_expected(request.stream_id, request.expected_version, versions[request.stream_id])
            except EventLogError as exc:
                done.outcomes.append((request, None, exc))
                continue
            plan.append((request, versions[request.stream_id]))
            versions[request.stream_id] += len(request.events)
            planned.update(request_ids)
        if not plan:
            await session.abort_transaction()
            return done
        # Round trip 3, the counter, last: from here to the commit, concurrent writers conflict.
        total = sum(len(r.events) for r, _ in plan)
        counter = await self._counters.find_one_and_update(
            {"_id": _COUNTER_ID},
            {"$inc": {"value": total}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        head = int(counter["value"]) - total
        if cached and head != self._cached_head:
            raise _StaleCache()
        position = head + 1
        hashes = {s: state.get(s, (0, GENESIS_HASH))[1] for s in streams}
        seal = chain.seal_encoded  # looked up per append so a test can inject a failure
        for request, version in plan:
            stream_id, out, prevhash = request.stream_id, [], hashes[request.stream_id]
            try:
                for offset, event in enumerate(request.events):
                    sealed, body = seal(
                        event,
                        stream_id=stream_id,
                        version=version + offset + 1,
                        position=position + offset,
                        prevhash=prevhash,
                        content=request.contents[offset],
                    )
                    prevhash = sealed.hash or GENESIS_HASH
                    out.append(sealed)
                    done.docs.append(
                        {
                            "_id": position + offset,
                            "stream_id": stream_id,
                            "version": version + offset + 1,
                            "event_id": event.id,
                            "type": event.type,
                            "body": Binary(body),
                        }
                    )
            except Exception as exc:
                raise _Refused(request, exc) from None
            hashes[stream_id] = prevhash
            position += len(request.events)
            done.pending[stream_id] = (version + len(request.events), prevhash)
            done.outcomes.append((request, out, None))
            done.written.append(request)
        # Round trip 4: the events.
        try:
            await self._events.insert_many(done.docs, ordered=True, session=session)
        except (BulkWriteError, DuplicateKeyError) as exc:
            if _duplicate_keys_only(exc):
                raise _Raced() from None
            raise
        except DocumentTooLarge as exc:
            raise self._too_large(plan, done.docs, exc) from None
        # Round trip 5: the commit.
        try:
            await _commit_transaction(session, deadline)
        except _CommitUnknown as unknown:
            unknown.done = done
            raise
        done.head = position - 1
        self._transactions += 1
        self._appends += len(done.outcomes)
        if head != self._cached_head:
            # Another writer committed since our last transaction: streams not in this group
            # may have moved. This group's were read (or checked) in this transaction.
            self._streams.clear()
        self._cached_head = done.head
        remember_streams(self._streams, done.pending, _STREAM_CACHE_SIZE)
        return done

    async def _stream_states(self, session: Any, streams: list[str]) -> dict[str, tuple[int, str]]:
        """Each stream's last version and hash, in one query (absent streams are left out)."""
        if not streams:
            return {}
        # $sort on the reverse of the (stream_id, version) index then $group with $first: the
        # server reads one index entry per stream (DISTINCT_SCAN), not every event of it.
        cursor = await self._events.aggregate(
            [
                {"$match": {"stream_id": {"$in": streams}}},
                {"$sort": {"stream_id": -1, "version": -1}},
                {"$group": {"_id": "$stream_id", "version": {"$first": "$version"}, "body": {"$first": "$body"}}},
            ],
            session=session,
        )
        rows = await cursor.to_list()
        lasts = decode_bodies([bytes(row["body"]) for row in rows])
        return {
            row["_id"]: (int(row["version"]), last.hash or GENESIS_HASH) for row, last in zip(rows, lasts, strict=True)
        }

    def _too_large(self, plan: list[tuple[_Append, int]], docs: list[dict[str, Any]], exc: Exception) -> _Refused:
        """The append holding the largest document, refused as EventTooLargeError."""
        match = _SERVER_LIMIT.search(str(exc))
        limit = int(match.group(1)) if match else self.max_event_bytes
        largest = max(range(len(docs)), key=lambda i: len(docs[i]["body"]))
        index = largest
        for request, _ in plan:
            if index < len(request.events):
                event = request.events[index]
                return _Refused(
                    request,
                    EventTooLargeError(
                        size=len(docs[largest]["body"]),
                        limit=min(limit, self.max_event_bytes),
                        event_type=event.type,
                        stream_id=request.stream_id,
                        event_id=event.id,
                    ),
                )
            index -= len(request.events)
        raise AssertionError("unreachable: the document belongs to an append")  # pragma: no cover

    # ---- reading ----------------------------------------------------------------------

    async def _watermark(self, session: Any) -> int:
        doc = await self._counters.find_one({"_id": _COUNTER_ID}, session=session)
        return 0 if doc is None else int(doc["value"])

    async def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> list[CloudEvent]:
        self._check_open()
        check_position("from_version", from_version)
        check_limit(limit)
        if limit == 0:
            return []
        with _driver_errors():
            cursor = self._events.find({"stream_id": stream_id, "version": {"$gte": from_version}}, {"body": 1})
            cursor = cursor.sort("version", ASCENDING)
            if limit is not None:
                cursor = cursor.limit(limit)
            docs = await cursor.to_list()
        return decode_bodies([bytes(d["body"]) for d in docs])

    async def read_all(
        self, from_position: int = 0, limit: int | None = None, types: Iterable[str] | None = None
    ) -> list[CloudEvent]:
        self._check_open()
        check_position("from_position", from_position)
        check_limit(limit)
        wanted = check_types(types)
        if limit == 0 or (wanted is not None and not wanted):
            return []
        start = max(from_position, 1)
        deadline = asyncio.get_running_loop().time() + _GAP_WAIT_S
        while True:
            with _driver_errors():
                async with self._client.start_session(causal_consistency=True) as session:
                    watermark = await self._watermark(session)
                    if start > watermark:
                        return []
                    query: dict[str, Any] = {"_id": {"$gte": start, "$lte": watermark}}
                    if wanted is not None:
                        query["type"] = {"$in": sorted(wanted)}
                    cursor = self._events.find(query, {"body": 1}, session=session).sort("_id", ASCENDING)
                    if limit is not None:
                        cursor = cursor.limit(limit)
                    docs = await cursor.to_list()
            if wanted is not None:
                return decode_bodies([bytes(d["body"]) for d in docs])
            # Unfiltered, every position from start up to the watermark must be there: serve
            # the gap-free prefix only, so a reader that resumes after it never skips one.
            dense = 0
            while dense < len(docs) and docs[dense]["_id"] == start + dense:
                dense += 1
            if dense:
                return decode_bodies([bytes(d["body"]) for d in docs[:dense]])
            if asyncio.get_running_loop().time() > deadline:
                raise EventLogUnavailableError(
                    f"position {start} is below the committed watermark {watermark} but not readable"
                )
            await asyncio.sleep(_POLL_MIN_S)

    async def head(self) -> int:
        self._check_open()
        with _driver_errors():
            async with self._client.start_session(causal_consistency=True) as session:
                return await self._watermark(session)

    async def stream_version(self, stream_id: str) -> int:
        self._check_open()
        with _driver_errors():
            doc = await self._events.find_one(
                {"stream_id": stream_id}, projection={"version": 1}, sort=[("version", DESCENDING)]
            )
        return 0 if doc is None else int(doc["version"])

    async def get_event(self, event_id: str) -> CloudEvent | None:
        self._check_open()
        with _driver_errors():
            doc = await self._events.find_one({"event_id": event_id}, {"body": 1})
        return None if doc is None else decode_bodies([bytes(doc["body"])])[0]

    async def subscribe(
        self, from_position: int = 0, *, types: Iterable[str] | None = None
    ) -> AsyncIterator[CloudEvent]:
        check_position("from_position", from_position)
        wanted = check_types(types)
        names = sorted(wanted) if wanted is not None else []
        position = max(from_position, 1)
        idle = _POLL_MIN_S
        while True:
            self._check_open()
            changed = self._changed
            try:
                if wanted is None:
                    batch, following, more = await unfiltered_page(self, position, _SUBSCRIBE_PAGE)
                else:
                    batch, following, more = await self._scan_types(position, names)
            except EventLogUnavailableError:
                # A read cut short by close() reports the close, not a failing server.
                self._check_open()
                raise
            if batch or following != position:
                # The log moved (even if only past events of other types): look again soon.
                idle = _POLL_MIN_S
            position = following
            for event in batch:
                yield event
            if more:
                continue
            # Our own appends wake us at once; other clients' are found by polling, backing off.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await changed.wait()
            idle = min(idle * 2, _POLL_MAX_S)

    async def _scan_types(self, start: int, types: list[str]) -> tuple[list[CloudEvent], int, bool]:
        """A filtered subscription's next page: the matching events, where the next read starts,
        and whether it should start at once (the page was full) or wait for new events.

        The events of other types are neither fetched nor decoded, yet the range the query
        covered (up to the watermark when the page is not full) is passed for good. Passing a
        range is only safe when no position in it can still appear, so, as ``read_all`` does
        for an unfiltered read, the range's positions are counted (on the ``_id`` index, no
        document is fetched) and a hole is waited for, never stepped over.
        """
        deadline = asyncio.get_running_loop().time() + _GAP_WAIT_S
        while True:
            with _driver_errors():
                async with self._client.start_session(causal_consistency=True) as session:
                    watermark = await self._watermark(session)
                    if start > watermark:
                        return [], start, False
                    query: dict[str, Any] = {"_id": {"$gte": start, "$lte": watermark}, "type": {"$in": types}}
                    cursor = self._events.find(query, {"body": 1}, session=session).sort("_id", ASCENDING)
                    docs = await cursor.limit(_SUBSCRIBE_PAGE).to_list()
                    full = len(docs) >= _SUBSCRIBE_PAGE
                    end = int(docs[-1]["_id"]) if full else watermark
                    present = await self._events.count_documents({"_id": {"$gte": start, "$lte": end}}, session=session)
            if present == end - start + 1:
                return decode_bodies([bytes(d["body"]) for d in docs]), end + 1, full
            if asyncio.get_running_loop().time() > deadline:
                raise EventLogUnavailableError(
                    f"positions {start}-{end} are below the committed watermark {watermark} but not all readable"
                )
            await asyncio.sleep(_POLL_MIN_S)

    async def ping(self) -> None:
        self._check_open()
        with _driver_errors():
            await self._db.command("ping")

    async def close(self) -> None:
        """Let the queued appends finish (each within its deadline), then disconnect."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        await self._stop_writer()
        with contextlib.suppress(PyMongoError):
            await self._client.close()

    async def _stop_writer(self) -> None:
        self._closed = True
        self._wakeup.set()
        await self._writer


class _Raced(Exception):
    """A unique index refused an insert that the transaction's snapshot said was free."""


class _StaleCache(Exception):
    """The counter shows a commit by another writer since ours: the stream cache may be stale."""


class _Refused(Exception):
    """One append of a group fails on its own (sealing failed, an event too large for a document)."""

    def __init__(self, request: _Append, error: BaseException) -> None:
        super().__init__(str(error))
        self.request = request
        self.error = error


class _CommitUnknown(Exception):
    """The commit was sent, and whether it was applied is unknown."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.done = _Group()
        """The transaction's decisions (set by ``_attempt``)."""


async def _commit_transaction(session: Any, deadline: float) -> None:
    """Commit, retrying while the outcome is unknown and the deadline allows.

    PyMongo labels an error ``UnknownTransactionCommitResult`` when the commit may have been
    applied (the connection dropped, the write concern timed out) and retries the commit with
    ``w: majority``; ``TransientTransactionError`` means it was not applied.

    Raises:
        _CommitUnknown: the outcome is still unknown at the deadline.
        PyMongoError: the commit was not applied.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            await session.commit_transaction()
            return
        except PyMongoError as exc:
            if exc.has_error_label("TransientTransactionError"):
                raise
            if isinstance(exc, OperationFailure) and not exc.has_error_label("UnknownTransactionCommitResult"):
                raise  # the server answered: not committed
            if exc.timeout or loop.time() >= deadline:
                raise _CommitUnknown(exc) from None
            await asyncio.sleep(_BACKOFF_INITIAL_S)


def _duplicate_keys_only(exc: PyMongoError) -> bool:
    """``exc`` (from ``insert_many``) reports duplicate keys and nothing else."""
    if isinstance(exc, DuplicateKeyError):
        return True
    errors = (getattr(exc, "details", None) or {}).get("writeErrors") or []
    return bool(errors) and all(error.get("code") == 11000 for error in errors)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of an append whose caller stopped waiting (no "never retrieved" warning)."""
    if not future.cancelled():
        future.exception()


@contextlib.contextmanager
def _driver_errors() -> Iterator[None]:
    """Translate PyMongo's exceptions into the event log's hierarchy at this boundary."""
    try:
        yield
    except PyMongoError as exc:
        _raise_translated(exc)
    except InvalidDocument as exc:  # DocumentTooLarge among them: not a PyMongoError
        raise EventLogUnavailableError(f"MongoDB refused a document: {exc}") from None


def _raise_translated(exc: PyMongoError) -> NoReturn:
    if isinstance(exc, OperationFailure) and (
        exc.code in (20, 263) or "replica set" in str(exc) or "Transaction numbers" in str(exc)
    ):
        raise EventLogUnavailableError(f"MongoDB refused a transaction ({exc}); " + REPLICA_SET_NEEDED) from None
    if isinstance(exc, ConfigurationError):
        raise EventLogArgumentError(f"MongoDB configuration: {exc}") from None
    raise EventLogUnavailableError(f"MongoDB failed: {exc}") from None


__all__ = ["DEFAULT_APPEND_TIMEOUT_S", "MAX_APPEND_BYTES", "MAX_APPEND_EVENTS", "REPLICA_SET_NEEDED", "MongoEventLog"]
