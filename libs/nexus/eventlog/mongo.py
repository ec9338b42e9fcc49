"""``mongodb://HOST/DB``: the production event log, through PyMongo's asyncio API.

MongoDB transactions need a **replica set** (or a sharded cluster): a standalone ``mongod``
is refused at open with a message saying so. For a single machine, start
``mongod --replSet rs0`` and run ``rs.initiate()`` once.

Layout, in the URL's database (``nexus`` when the URL names none):

* ``events``: one document per event, ``_id`` = position, with ``stream_id``, ``version``,
  ``event_id``, ``type`` and ``body`` (the event's JSON, as stored and hashed). Unique
  indexes on (``stream_id``, ``version``) and on ``event_id``; (``type``, ``_id``) for filters.
* ``counters``: ``{_id: "position", value: N}``, the last position handed out.

An append is one multi-document transaction (write concern majority + journal, read concern
majority) that first increments the position counter, then checks the stream's version and
the batch's ids, then inserts the events. Because the counter is written in the same
transaction, an aborted append returns its positions (no gap), and two concurrent appends
conflict on the counter: MongoDB aborts one with a TransientTransactionError and it is
retried. Readers never trust the order in which documents become visible: a read first takes
the counter (majority-committed) as its watermark, then reads events at or below it in the
same causally consistent session, so a position is only served once every lower one is
committed; a hole below the watermark is waited for and never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from nexus.eventlog import chain
from nexus.eventlog._codec import decode_bodies
from nexus.eventlog._common import (
    check_append,
    check_expected,
    check_limit,
    check_position,
    check_types,
    encode_contents,
    match_stored,
    resolve_max_event_bytes,
)
from nexus.eventlog._errors import (
    EventLogArgumentError,
    EventLogClosedError,
    EventLogUnavailableError,
)
from nexus.eventlog._port import ANY, GENESIS_HASH, EventLog
from nexus.proto import CloudEvent

try:
    from bson.binary import Binary
    from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
    from pymongo.errors import ConfigurationError, DuplicateKeyError, OperationFailure, PyMongoError
    from pymongo.read_concern import ReadConcern
    from pymongo.write_concern import WriteConcern
except ImportError:  # pragma: no cover - pymongo is a declared dependency
    AsyncMongoClient = None  # type: ignore[assignment,misc]  # pymongo missing: refused at open

REPLICA_SET_NEEDED: Final = (
    "the MongoDB event log needs a replica set (multi-document transactions): start mongod with "
    "--replSet rs0, run rs.initiate() once, and connect to it"
)
_COUNTER_ID: Final = "position"
_GAP_WAIT_S: Final = 5.0
"""How long a read waits for a hole below the watermark before reporting the store damaged."""
_POLL_MIN_S: Final = 0.02
_POLL_MAX_S: Final = 0.5
_SUBSCRIBE_PAGE: Final = 1000
_APPEND_ATTEMPTS: Final = 5


class _AlreadyStored(Exception):
    """Aborts an append's transaction when the whole batch is a retry of stored events."""

    def __init__(self, stored: list[CloudEvent]) -> None:
        super().__init__("already stored")
        self.stored = stored


class MongoEventLog(EventLog):
    """The event log in a MongoDB replica set; open it with ``await MongoEventLog.open(url)``."""

    def __init__(self, url: str, client: Any, database: str, *, max_event_bytes: int | None = None) -> None:
        self.url = url
        self.max_event_bytes = resolve_max_event_bytes(max_event_bytes)
        self._client = client
        self._db = client.get_database(
            database,
            write_concern=WriteConcern(w="majority", j=True),
            read_concern=ReadConcern("majority"),
        )
        self._events = self._db["events"]
        self._counters = self._db["counters"]
        self._closed = False
        self._changed = asyncio.Event()

    @classmethod
    async def open(cls, url: str, *, max_event_bytes: int | None = None) -> MongoEventLog:
        """Connect, check that the server is a replica set, and create the indexes.

        ``max_event_bytes``: the per-event size limit (default: ``NEXUS_MAX_EVENT_BYTES``, else 512 KiB).

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
            with _driver_errors():
                hello = await client.admin.command("hello")
                if "setName" not in hello and hello.get("msg") != "isdbgrid":
                    raise EventLogUnavailableError(
                        f"MongoDB at {parts.hostname} is a standalone server; " + REPLICA_SET_NEEDED
                    )
                log = cls(url, client, database, max_event_bytes=limit)
                await log._events.create_index(
                    [("stream_id", ASCENDING), ("version", ASCENDING)], unique=True, name="stream_version"
                )
                await log._events.create_index([("event_id", ASCENDING)], unique=True, name="event_id")
                await log._events.create_index([("type", ASCENDING), ("_id", ASCENDING)], name="type_position")
                # Created outside any transaction, so appends only ever update it.
                await log._counters.update_one({"_id": _COUNTER_ID}, {"$setOnInsert": {"value": 0}}, upsert=True)
        except BaseException:
            await client.close()
            raise
        return log

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogClosedError("the event log is closed")

    # ---- writing ----------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[CloudEvent], expected_version: int = ANY
    ) -> list[CloudEvent]:
        self._check_open()
        check_append(stream_id, events, expected_version)
        batch = list(events)
        # Encoded (and size-checked) once, outside the transaction that a conflict may retry.
        contents = encode_contents(batch, stream_id=stream_id, limit=self.max_event_bytes)
        for _ in range(_APPEND_ATTEMPTS):
            try:
                with _driver_errors():
                    async with self._client.start_session() as session:
                        # with_transaction retries the whole callback on TransientTransactionError
                        # (a write conflict on the counter) and the commit on an unknown result.
                        stored: list[CloudEvent] = await session.with_transaction(
                            lambda s: self._append_in(s, stream_id, batch, contents, expected_version)
                        )
            except _AlreadyStored as done:
                return done.stored
            except _Raced:
                # Another client committed the same id or version after our snapshot: decide again.
                continue
            self._changed.set()
            self._changed = asyncio.Event()
            return stored
        raise EventLogUnavailableError(
            f"stream {stream_id!r}: the append kept colliding with concurrent writers; retry it"
        )

    async def _append_in(
        self,
        session: Any,
        stream_id: str,
        events: list[CloudEvent],
        contents: list[tuple[bytes, bytes]],
        expected_version: int,
    ) -> list[CloudEvent]:
        # The counter first: it makes concurrent appends conflict before they read anything,
        # which serialises them (snapshot reads below cannot be stale for a committed append).
        counter = await self._counters.find_one_and_update(
            {"_id": _COUNTER_ID},
            {"$inc": {"value": len(events)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        first_position = counter["value"] - len(events) + 1
        found = await self._stored(session, events)
        stored = match_stored(stream_id, events, found)
        if stored is not None:
            raise _AlreadyStored(stored)  # aborts, so the counter increment is undone
        last = await self._events.find_one(
            {"stream_id": stream_id},
            projection={"version": 1, "body": 1},
            sort=[("version", DESCENDING)],
            session=session,
        )
        version = 0 if last is None else last["version"]
        prevhash = GENESIS_HASH if last is None else decode_bodies([bytes(last["body"])])[0].hash
        check_expected(stream_id, expected_version, version)
        out: list[CloudEvent] = []
        docs: list[dict[str, Any]] = []
        seal = chain.seal_encoded  # looked up per append so a test can inject a failure
        for offset, event in enumerate(events):
            sealed, body = seal(
                event,
                stream_id=stream_id,
                version=version + offset + 1,
                position=first_position + offset,
                prevhash=prevhash or GENESIS_HASH,  # a stored event always has its hash
                content=contents[offset],
            )
            prevhash = sealed.hash
            out.append(sealed)
            docs.append(
                {
                    "_id": first_position + offset,
                    "stream_id": stream_id,
                    "version": version + offset + 1,
                    "event_id": event.id,
                    "type": event.type,
                    "body": Binary(body),
                }
            )
        try:
            await self._events.insert_many(docs, ordered=True, session=session)
        except DuplicateKeyError:
            raise _Raced() from None
        return out

    async def _stored(self, session: Any, events: list[CloudEvent]) -> list[CloudEvent | None]:
        ids = [e.id for e in events]
        docs = await self._events.find({"event_id": {"$in": ids}}, {"body": 1}, session=session).to_list()
        by_id = {e.id: e for e in decode_bodies([bytes(d["body"]) for d in docs])}
        return [by_id.get(i) for i in ids]

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
                    batch = await self.read_all(position, _SUBSCRIBE_PAGE)
                    following = (batch[-1].position or position) + 1 if batch else position
                    more = bool(batch)
                else:
                    batch, following, more = await self._scan_types(position, names)
            except EventLogUnavailableError:
                # A read cut short by close() reports the close, not a failing server.
                self._check_open()
                raise
            position = following
            if batch:
                idle = _POLL_MIN_S
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
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        with contextlib.suppress(PyMongoError):
            await self._client.close()


class _Raced(Exception):
    """A unique index refused an insert that our snapshot said was free."""


@contextlib.contextmanager
def _driver_errors() -> Iterator[None]:
    """Translate PyMongo's exceptions into the event log's hierarchy at this boundary."""
    try:
        yield
    except PyMongoError as exc:
        _raise_translated(exc)


def _raise_translated(exc: PyMongoError) -> NoReturn:
    if isinstance(exc, OperationFailure) and (
        exc.code in (20, 263) or "replica set" in str(exc) or "Transaction numbers" in str(exc)
    ):
        raise EventLogUnavailableError(f"MongoDB refused a transaction ({exc}); " + REPLICA_SET_NEEDED) from None
    if isinstance(exc, ConfigurationError):
        raise EventLogArgumentError(f"MongoDB configuration: {exc}") from None
    raise EventLogUnavailableError(f"MongoDB failed: {exc}") from None


__all__ = ["REPLICA_SET_NEEDED", "MongoEventLog"]
