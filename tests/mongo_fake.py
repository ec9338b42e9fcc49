"""An in-process stand-in for a MongoDB replica set, as PyMongo's asyncio API shows it.

No MongoDB server can be started on the machines the tests run on, so the MongoDB adapters'
own behaviour (group commit, retries, error translation, GridFS revisions) is tested against
this fake, and their contract suites run against a real replica set wherever one is reachable
(``NEXUS_TEST_MONGO_URL``). The fake reproduces what the adapters depend on, with PyMongo's own
exception classes and error labels:

* every call is one round trip: it yields to the event loop, so concurrent tasks interleave
  between calls as they do against a server;
* multi-document transactions read from a snapshot taken at their first operation and buffer
  their writes until the commit; writing a document that another open transaction wrote, or
  that was committed after the snapshot, fails with WriteConflict (code 112) labelled
  ``TransientTransactionError``, and the server aborts the transaction (later commands fail
  with NoSuchTransaction, code 251, labelled the same);
* a transaction's read and write concerns are the ones given to ``start_transaction`` (or
  ``with_transaction``), else the client's: a database's concerns are NOT inherited (PyMongo's
  ``_inherit_option``); each commit's concerns are recorded in ``FakeServer.commits``;
* ``insert_many`` reports a duplicate key as ``BulkWriteError`` (code 65, the 11000 in its
  ``writeErrors``), ``insert_one`` as ``DuplicateKeyError``; a document over the server's
  ``maxBsonObjectSize`` raises ``DocumentTooLarge`` before anything is sent;
* a network error (a hook raising ConnectionFailure) inside a transaction, but for the commit,
  is labelled ``TransientTransactionError``, as the transactions specification has drivers do;
* a commit fault can be armed (``FakeServer.commit_faults``): applied or not, then an error that
  PyMongo labels ``UnknownTransactionCommitResult``;
* ``FakeBucket`` is GridFS as PyMongo's ``AsyncGridFSBucket`` does it: chunks first, the files
  document at close (``uploadDate`` from the client's clock), an upload that fails inside
  ``async with`` leaves its chunks, ``delete`` removes the files document then the chunks, and a
  download reads chunk by chunk, raising ``CorruptGridFile`` for a chunk that is gone.

``FakeServer.examined`` counts the documents queries looked at, as ``explain`` would.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import io
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import ObjectId
from gridfs.errors import CorruptGridFile, NoFile
from pymongo import ReturnDocument
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    InvalidOperation,
    OperationFailure,
    PyMongoError,
)
from pymongo.read_concern import ReadConcern
from pymongo.results import DeleteResult, InsertManyResult, InsertOneResult, UpdateResult
from pymongo.write_concern import WriteConcern

Hook = Callable[["FakeSession | None"], Awaitable[None]]


def write_conflict() -> OperationFailure:
    return OperationFailure(
        "Write conflict during plan execution and yielding is disabled.",
        112,
        {"ok": 0, "code": 112, "codeName": "WriteConflict", "errorLabels": ["TransientTransactionError"]},
    )


def _no_such_transaction() -> OperationFailure:
    return OperationFailure(
        "Transaction has been aborted.",
        251,
        {"ok": 0, "code": 251, "codeName": "NoSuchTransaction", "errorLabels": ["TransientTransactionError"]},
    )


@dataclass
class _Index:
    name: str
    keys: list[str]
    unique: bool


@dataclass
class _Data:
    """One collection: every document's history of (commit time, document or None if deleted)."""

    history: dict[Any, list[tuple[int, dict[str, Any] | None]]] = field(default_factory=dict)
    indexes: list[_Index] = field(default_factory=list)

    def at(self, ts: int | None) -> dict[Any, dict[str, Any]]:
        out = {}
        for key, versions in self.history.items():
            visible = [doc for when, doc in versions if ts is None or when <= ts]
            if visible and visible[-1] is not None:
                out[key] = visible[-1]
        return out

    def last_change(self, key: Any) -> int:
        versions = self.history.get(key)
        return versions[-1][0] if versions else -1


@dataclass
class CommitFault:
    """What the next commit does: apply the transaction or not, then fail with ``error``."""

    applied: bool
    error: PyMongoError


class FakeServer:
    def __init__(self, *, max_bson_size: int = 16 * 1024 * 1024) -> None:
        self.max_bson_size = max_bson_size
        self.data: dict[str, _Data] = {}
        self.clock = 0
        self.commits: list[dict[str, Any]] = []
        """Each committed transaction's concerns: ``{"write_concern": …, "read_concern": …}``."""
        self.commit_faults: list[CommitFault] = []
        self.hooks: dict[str, list[Hook]] = {}
        """One-shot callbacks, by ``"collection.operation"``: the next of them runs before each such operation."""
        self.examined = 0
        self.trace: list[str] = []
        """Every operation, in the order the server received them."""
        self.open: set[FakeSession] = set()

    def client(self) -> FakeClient:
        return FakeClient(self)

    def collection(self, name: str) -> _Data:
        return self.data.setdefault(name, _Data(indexes=[_Index("_id_", ["_id"], True)]))

    def on(self, operation: str, hook: Hook) -> None:
        self.hooks.setdefault(operation, []).append(hook)

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    async def round_trip(self, operation: str, session: FakeSession | None) -> None:
        await asyncio.sleep(0)
        self.trace.append(operation)
        waiting = self.hooks.get(operation)
        if waiting:
            hook = waiting.pop(0)  # one per round trip, in the order they were armed
            try:
                await hook(session)
            except ConnectionFailure as exc:
                if session is not None and session.in_transaction and not operation.endswith("commitTransaction"):
                    # The transactions specification: a network error inside a transaction
                    # (but for the commit) is labelled TransientTransactionError.
                    exc._add_error_label("TransientTransactionError")
                raise
        if session is not None and session.in_transaction and session.aborted:
            raise _no_such_transaction()


class FakeClient:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.write_concern = WriteConcern()
        self.read_concern = ReadConcern()
        self.admin = FakeDatabase(self, "admin")
        self.closed = False

    def get_database(
        self, name: str, *, write_concern: WriteConcern | None = None, read_concern: ReadConcern | None = None
    ) -> FakeDatabase:
        return FakeDatabase(self, name, write_concern=write_concern, read_concern=read_concern)

    def start_session(self, causal_consistency: bool | None = None) -> FakeSession:
        return FakeSession(self)

    async def close(self) -> None:
        self.closed = True


class FakeDatabase:
    def __init__(
        self,
        client: FakeClient,
        name: str,
        *,
        write_concern: WriteConcern | None = None,
        read_concern: ReadConcern | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.write_concern = write_concern or client.write_concern
        self.read_concern = read_concern or client.read_concern

    def __getitem__(self, name: str) -> FakeCollection:
        return FakeCollection(self, name)

    async def command(self, name: str) -> dict[str, Any]:
        await self.client.server.round_trip(f"admin.{name}", None)
        if name == "hello":
            return {
                "ok": 1,
                "setName": "rs0",
                "isWritablePrimary": True,
                "maxBsonObjectSize": self.client.server.max_bson_size,
            }
        return {"ok": 1}


class FakeSession:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.server = client.server
        self.in_transaction = False
        self.aborted = False
        self.snapshot: int | None = None
        self.writes: dict[tuple[str, Any], dict[str, Any] | None] = {}
        self.options: tuple[ReadConcern, WriteConcern] | None = None

    async def __aenter__(self) -> FakeSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.in_transaction:
            await self.abort_transaction()

    async def start_transaction(
        self,
        read_concern: ReadConcern | None = None,
        write_concern: WriteConcern | None = None,
        read_preference: Any = None,
        max_commit_time_ms: int | None = None,
    ) -> None:
        if self.in_transaction:
            raise InvalidOperation("Transaction already in progress")
        # PyMongo's _inherit_option: the argument, else the session's defaults, else the CLIENT's.
        self.options = (read_concern or self.client.read_concern, write_concern or self.client.write_concern)
        self.in_transaction, self.aborted, self.snapshot, self.writes = True, False, None, {}
        self.server.open.add(self)

    async def with_transaction(
        self,
        callback: Callable[[FakeSession], Awaitable[Any]],
        read_concern: ReadConcern | None = None,
        write_concern: WriteConcern | None = None,
        read_preference: Any = None,
        max_commit_time_ms: int | None = None,
    ) -> Any:
        """PyMongo's loop: the callback again on TransientTransactionError, the commit again on an unknown result."""
        while True:
            await self.start_transaction(read_concern, write_concern)
            try:
                result = await callback(self)
            except BaseException as exc:
                if self.in_transaction:
                    await self.abort_transaction()
                if isinstance(exc, PyMongoError) and exc.has_error_label("TransientTransactionError"):
                    await asyncio.sleep(0.001)
                    continue
                raise
            if not self.in_transaction:
                return result
            while True:
                try:
                    await self.commit_transaction()
                except PyMongoError as exc:
                    if exc.has_error_label("UnknownTransactionCommitResult"):
                        continue
                    if exc.has_error_label("TransientTransactionError"):
                        break
                    raise
                return result

    async def commit_transaction(self) -> None:
        if not self.in_transaction and self.options is None:
            raise InvalidOperation("No transaction started")
        await self.server.round_trip("admin.commitTransaction", self if self.in_transaction else None)
        fault = self.server.commit_faults.pop(0) if self.server.commit_faults else None
        if self.in_transaction and (fault is None or fault.applied):
            self._apply()
        if fault is not None:
            # PyMongo adds this label to a connection failure or timeout during the commit.
            fault.error._add_error_label("UnknownTransactionCommitResult")
            raise fault.error

    def _apply(self) -> None:
        assert self.options is not None
        ts = self.server.tick()
        for (name, key), doc in self.writes.items():
            self.server.collection(name).history.setdefault(key, []).append((ts, doc))
        read_concern, write_concern = self.options
        self.server.commits.append({"write_concern": write_concern.document, "read_concern": read_concern.document})
        self._end()

    async def abort_transaction(self) -> None:
        if not self.in_transaction:
            raise InvalidOperation("No transaction started")
        await asyncio.sleep(0)
        self._end()

    def _end(self) -> None:
        self.in_transaction, self.writes = False, {}
        self.server.open.discard(self)

    def read_at(self) -> int:
        if self.snapshot is None:
            self.snapshot = self.server.clock
        return self.snapshot


def _field(doc: dict[str, Any], name: str) -> Any:
    return doc.get(name)


def _matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for name, condition in query.items():
        if name == "$or":
            if not any(_matches(doc, sub) for sub in condition):
                return False
            continue
        value = _field(doc, name)
        if isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
            for op, arg in condition.items():
                if not _compare(value, op, arg):
                    return False
        elif value != condition:
            return False
    return True


def _compare(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if op == "$in":
        return value in arg
    if op == "$regex":
        return isinstance(value, str) and re.search(arg, value) is not None
    if value is None or type(value) is not type(arg):
        return False
    return bool({"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op])


def _project(doc: dict[str, Any], projection: dict[str, Any] | None) -> dict[str, Any]:
    if not projection:
        return copy.deepcopy(doc)
    out = {k: copy.deepcopy(doc[k]) for k, v in projection.items() if v and k in doc}
    if projection.get("_id", 1) and "_id" in doc:
        out["_id"] = doc["_id"]
    return out


def _sort_spec(key: Any, direction: int | None = None) -> list[tuple[str, int]]:
    if isinstance(key, str):
        return [(key, direction or 1)]
    if isinstance(key, dict):
        return list(key.items())
    return [(k, d) for k, d in key]


def _sorted(docs: list[dict[str, Any]], spec: list[tuple[str, int]]) -> list[dict[str, Any]]:
    for name, direction in reversed(spec):
        docs = sorted(docs, key=lambda d: (d.get(name) is not None, d.get(name)), reverse=direction < 0)
    return docs


class FakeCursor:
    """A query's results, fetched in batches (one round trip each) as they are consumed."""

    def __init__(
        self,
        collection: FakeCollection,
        query: dict[str, Any],
        projection: dict[str, Any] | None,
        session: FakeSession | None,
    ) -> None:
        self._collection, self._query, self._projection, self._session = collection, query, projection, session
        self._sort: list[tuple[str, int]] = []
        self._limit = 0
        self._batch = 101
        self._results: list[dict[str, Any]] | None = None
        self._next = 0

    def sort(self, key: Any, direction: int | None = None) -> FakeCursor:
        self._sort = _sort_spec(key, direction)
        return self

    def limit(self, limit: int) -> FakeCursor:
        self._limit = limit
        return self

    def batch_size(self, size: int) -> FakeCursor:
        self._batch = size
        return self

    def __aiter__(self) -> FakeCursor:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._results is None or (self._next % self._batch == 0 and self._next < len(self._results)):
            await self._collection.server.round_trip(f"{self._collection.name}.find", self._session)
        if self._results is None:
            docs = [d for d in self._collection.view(self._session).values() if _matches(d, self._query)]
            docs = _sorted(docs, self._sort)
            self._results = docs[: self._limit] if self._limit else docs
        if self._next >= len(self._results):
            raise StopAsyncIteration
        doc = self._results[self._next]
        self._next += 1
        self._collection.server.examined += 1  # an index scan reads what it returns, no more
        return _project(doc, self._projection)

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        return [doc async for doc in self]

    async def close(self) -> None:
        self._results = []


class _AggregateCursor:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self._docs = docs

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        for doc in self._docs:
            yield doc

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        return list(self._docs)


class FakeCollection:
    def __init__(self, database: FakeDatabase, name: str) -> None:
        self.database = database
        self.name = name
        self.server = database.client.server
        self.data = self.server.collection(name)

    # ---- state seen by a session ----

    def view(self, session: FakeSession | None) -> dict[Any, dict[str, Any]]:
        if session is None or not session.in_transaction:
            return self.data.at(None)
        docs = self.data.at(session.read_at())
        for (name, key), doc in session.writes.items():
            if name == self.name:
                if doc is None:
                    docs.pop(key, None)
                else:
                    docs[key] = doc
        return docs

    def _write(self, session: FakeSession | None, key: Any, doc: dict[str, Any] | None) -> None:
        if session is not None and session.in_transaction:
            others = [s for s in self.server.open if s is not session and (self.name, key) in s.writes]
            if others or self.data.last_change(key) > session.read_at():
                session.aborted = True  # the server aborts a transaction that meets a write conflict
                raise write_conflict()
            session.writes[(self.name, key)] = doc
        else:
            self.data.history.setdefault(key, []).append((self.server.tick(), doc))

    def _unique_keys(self, session: FakeSession | None) -> dict[str, set[tuple[Any, ...]]]:
        """The keys each unique index holds, as an insert by ``session`` meets them."""
        existing = self.view(session)
        if session is not None and session.in_transaction:
            existing = {**self.data.at(None), **existing}  # a committed key counts, whenever it was committed
        return {
            index.name: {tuple(doc.get(name) for name in index.keys) for doc in existing.values()}
            for index in self.data.indexes
            if index.unique
        }

    def _taken(self, held: dict[str, set[tuple[Any, ...]]], doc: dict[str, Any]) -> dict[str, Any] | None:
        """The key of ``doc`` that a unique index already holds; else None, and its keys are held."""
        keys = {index.name: tuple(doc.get(name) for name in index.keys) for index in self.data.indexes if index.unique}
        for index in self.data.indexes:
            if index.unique and keys[index.name] in held[index.name]:
                return dict(zip(index.keys, keys[index.name], strict=True))
        for name, key in keys.items():
            held[name].add(key)
        return None

    def _check_size(self, doc: dict[str, Any]) -> None:
        size = len(bson.encode(doc))
        if size > self.server.max_bson_size:
            raise DocumentTooLarge(
                f"BSON document too large ({size} bytes) - the connected server supports BSON document "
                f"sizes up to {self.server.max_bson_size} bytes."
            )

    # ---- the API ----

    async def create_index(self, keys: Any, unique: bool = False, name: str | None = None, **_: Any) -> str:
        await self.server.round_trip(f"{self.name}.create_index", None)
        names = [k for k, _ in _sort_spec(keys)]
        index_name = name or "_".join(names)
        if all(i.name != index_name for i in self.data.indexes):
            self.data.indexes.append(_Index(index_name, names, unique))
        return index_name

    def find(
        self, query: dict[str, Any] | None = None, projection: dict[str, Any] | None = None, *, session: Any = None
    ) -> FakeCursor:
        return FakeCursor(self, query or {}, projection, session)

    async def find_one(
        self,
        query: dict[str, Any] | None = None,
        projection: dict[str, Any] | None = None,
        *,
        sort: Any = None,
        session: Any = None,
    ) -> dict[str, Any] | None:
        cursor = self.find(query, projection, session=session).limit(1)
        if sort is not None:
            cursor.sort(sort)
        docs = await cursor.to_list()
        return docs[0] if docs else None

    async def count_documents(self, query: dict[str, Any], *, session: Any = None) -> int:
        await self.server.round_trip(f"{self.name}.count_documents", session)
        return sum(1 for d in self.view(session).values() if _matches(d, query))

    async def aggregate(self, pipeline: list[dict[str, Any]], *, session: Any = None) -> _AggregateCursor:
        await self.server.round_trip(f"{self.name}.aggregate", session)
        docs = list(self.view(session).values())
        for stage in pipeline:
            ((op, arg),) = stage.items()
            if op == "$match":
                docs = [d for d in docs if _matches(d, arg)]
                self.server.examined += len(docs)
            elif op == "$sort":
                docs = _sorted(docs, _sort_spec(arg))
            elif op == "$limit":
                docs = docs[:arg]
            elif op == "$group":
                groups: dict[Any, dict[str, Any]] = {}
                for d in docs:
                    key = d.get(arg["_id"][1:]) if isinstance(arg["_id"], str) else None
                    if key not in groups:
                        groups[key] = {"_id": key}
                        for out, acc in arg.items():
                            if out != "_id":
                                ((name, source),) = acc.items()
                                assert name == "$first", name
                                groups[key][out] = d.get(source[1:])
                docs = list(groups.values())
            else:
                raise NotImplementedError(op)
        return _AggregateCursor([copy.deepcopy(d) for d in docs])

    async def insert_one(self, doc: dict[str, Any], *, session: Any = None) -> InsertOneResult:
        doc.setdefault("_id", ObjectId())
        self._check_size(doc)
        await self.server.round_trip(f"{self.name}.insert_one", session)
        if (key := self._taken(self._unique_keys(session), doc)) is not None:
            if session is not None and session.in_transaction:
                session.aborted = True
            raise DuplicateKeyError(f"E11000 duplicate key error collection: {self.name} dup key: {key}", 11000)
        self._write(session, doc["_id"], copy.deepcopy(doc))
        return InsertOneResult(doc["_id"], True)

    async def insert_many(
        self, docs: Iterable[dict[str, Any]], ordered: bool = True, *, session: Any = None
    ) -> InsertManyResult:
        docs = list(docs)
        for doc in docs:
            doc.setdefault("_id", ObjectId())
            self._check_size(doc)  # PyMongo encodes the batch before sending it
        await self.server.round_trip(f"{self.name}.insert_many", session)
        held = self._unique_keys(session)
        for index, doc in enumerate(docs):
            if (key := self._taken(held, doc)) is not None:
                if session is not None and session.in_transaction:
                    session.aborted = True
                error = {"index": index, "code": 11000, "errmsg": f"E11000 duplicate key error dup key: {key}"}
                raise BulkWriteError(
                    {"writeErrors": [error], "writeConcernErrors": [], "nInserted": index, "upserted": []}
                )
            self._write(session, doc["_id"], copy.deepcopy(doc))
        return InsertManyResult([d["_id"] for d in docs], True)

    def _updated(self, doc: dict[str, Any] | None, query: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
        new = copy.deepcopy(doc) if doc is not None else {k: v for k, v in query.items() if not isinstance(v, dict)}
        for op, fields in update.items():
            for name, value in fields.items():
                if op == "$inc":
                    new[name] = new.get(name, 0) + value
                elif op == "$set" or (op == "$setOnInsert" and doc is None):
                    new[name] = value
        return new

    async def find_one_and_update(
        self,
        query: dict[str, Any],
        update: dict[str, Any],
        *,
        upsert: bool = False,
        return_document: bool = ReturnDocument.BEFORE,
        session: Any = None,
    ) -> dict[str, Any] | None:
        await self.server.round_trip(f"{self.name}.find_one_and_update", session)
        found = [d for d in self.view(session).values() if _matches(d, query)]
        if not found and not upsert:
            return None
        before = found[0] if found else None
        after = self._updated(before, query, update)
        self._write(session, after["_id"], after)
        return copy.deepcopy(after if return_document == ReturnDocument.AFTER else before)

    async def update_one(
        self, query: dict[str, Any], update: dict[str, Any], upsert: bool = False, *, session: Any = None
    ) -> UpdateResult:
        before = await self.find_one_and_update(query, update, upsert=upsert, session=session)
        return UpdateResult({"n": 1, "nModified": int(before is not None)}, True)

    async def delete_one(self, query: dict[str, Any], *, session: Any = None) -> DeleteResult:
        await self.server.round_trip(f"{self.name}.delete_one", session)
        found = [d for d in self.view(session).values() if _matches(d, query)][:1]
        for doc in found:
            self._write(session, doc["_id"], None)
        return DeleteResult({"n": len(found)}, True)

    async def delete_many(self, query: dict[str, Any], *, session: Any = None) -> DeleteResult:
        await self.server.round_trip(f"{self.name}.delete_many", session)
        found = [d for d in self.view(session).values() if _matches(d, query)]
        for doc in found:
            self._write(session, doc["_id"], None)
        return DeleteResult({"n": len(found)}, True)


# ---- GridFS ---------------------------------------------------------------------------------

_CHUNK_SIZE = 255 * 1024


class FakeGridIn:
    def __init__(self, bucket: FakeBucket, file_id: Any, filename: str, chunk_size: int, metadata: Any) -> None:
        self._bucket = bucket
        self._id = file_id
        self._file: dict[str, Any] = {"_id": file_id, "filename": filename, "chunkSize": chunk_size}
        if metadata is not None:
            self._file["metadata"] = metadata
        self._chunk_size = chunk_size
        self._buffer = io.BytesIO()
        self._n = 0
        self._length = 0
        self.closed = False

    async def write(self, data: bytes) -> None:
        self._buffer.write(data)
        while self._buffer.tell() >= self._chunk_size:
            await self._flush_chunk(final=False)

    async def _flush_chunk(self, *, final: bool) -> None:
        pending = self._buffer.getvalue()
        piece, rest = (pending, b"") if final else (pending[: self._chunk_size], pending[self._chunk_size :])
        if piece:
            await self._bucket.chunks.insert_one({"files_id": self._id, "n": self._n, "data": bson.Binary(piece)})
            self._n += 1
            self._length += len(piece)
        self._buffer = io.BytesIO()
        self._buffer.write(rest)

    async def close(self) -> None:
        if self.closed:
            return
        await self._flush_chunk(final=True)
        self._file["length"] = self._length
        now = datetime.datetime.now(tz=datetime.UTC)
        self._file["uploadDate"] = now.replace(microsecond=now.microsecond // 1000 * 1000)  # BSON keeps ms
        await self._bucket.files.insert_one(self._file)
        self.closed = True

    async def abort(self) -> None:
        await self._bucket.chunks.delete_many({"files_id": {"$eq": self._id}})
        await self._bucket.files.delete_one({"_id": {"$eq": self._id}})
        self.closed = True

    async def __aenter__(self) -> FakeGridIn:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> bool:
        # As PyMongo: close when all went well; otherwise only mark closed, leaving the chunks.
        if exc_type is None:
            await self.close()
        else:
            self.closed = True
        return False


class FakeGridOut:
    def __init__(self, bucket: FakeBucket, file: dict[str, Any]) -> None:
        self._bucket = bucket
        self._file = file

    async def read(self) -> bytes:
        length, chunk_size = int(self._file["length"]), int(self._file["chunkSize"])
        expected = -(-length // chunk_size)
        out = bytearray()
        for n in range(expected):
            chunk = await self._bucket.chunks.find_one({"files_id": self._file["_id"], "n": n})
            if chunk is None:
                raise CorruptGridFile(f"no chunk #{n}")
            out += bytes(chunk["data"])
        if len(out) != length:
            raise CorruptGridFile("truncated chunk")
        return bytes(out)


class FakeBucket:
    """GridFS, as ``gridfs.AsyncGridFSBucket`` stores and reads it."""

    def __init__(self, db: FakeDatabase, bucket_name: str = "fs", chunk_size_bytes: int = _CHUNK_SIZE) -> None:
        self.files = db[f"{bucket_name}.files"]
        self.chunks = db[f"{bucket_name}.chunks"]
        self._chunk_size = chunk_size_bytes

    def open_upload_stream(
        self, filename: str, chunk_size_bytes: int | None = None, metadata: Any = None, session: Any = None
    ) -> FakeGridIn:
        return self.open_upload_stream_with_id(ObjectId(), filename, chunk_size_bytes, metadata)

    def open_upload_stream_with_id(
        self,
        file_id: Any,
        filename: str,
        chunk_size_bytes: int | None = None,
        metadata: Any = None,
        session: Any = None,
    ) -> FakeGridIn:
        return FakeGridIn(self, file_id, filename, chunk_size_bytes or self._chunk_size, metadata)

    async def upload_from_stream(
        self, filename: str, source: bytes, chunk_size_bytes: int | None = None, metadata: Any = None
    ) -> Any:
        async with self.open_upload_stream(filename, chunk_size_bytes, metadata) as gin:
            await gin.write(source)
        return gin._id

    async def open_download_stream(self, file_id: Any, session: Any = None) -> FakeGridOut:
        file = await self.files.find_one({"_id": file_id})
        if file is None:
            raise NoFile(f"no file in gridfs collection {self.files.name!r} with _id {file_id!r}")
        return FakeGridOut(self, file)

    async def open_download_stream_by_name(self, filename: str, revision: int = -1) -> FakeGridOut:
        file = await self.files.find_one({"filename": filename}, sort=[("uploadDate", -1)])
        if file is None:
            raise NoFile(f"no version {revision} for filename {filename!r}")
        return FakeGridOut(self, file)

    async def delete(self, file_id: Any, session: Any = None) -> None:
        res = await self.files.delete_one({"_id": {"$eq": file_id}})
        await self.chunks.delete_many({"files_id": {"$eq": file_id}})
        if not res.deleted_count:
            raise NoFile(f"no file could be deleted because none matched {file_id}")

    async def delete_by_name(self, filename: str, session: Any = None) -> None:
        ids = [d["_id"] for d in await self.files.find({"filename": filename}, {"_id": 1}).to_list()]
        res = await self.files.delete_many({"_id": {"$in": ids}})
        await self.chunks.delete_many({"files_id": {"$in": ids}})
        if not res.deleted_count:
            raise NoFile(f"no file could be deleted because none matched filename {filename!r}")
