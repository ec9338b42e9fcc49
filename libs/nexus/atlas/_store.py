"""The Atlas view store: named collections of views, queries, indexes, subscriptions, snapshots."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import msgspec

from nexus.atlas._errors import AtlasFilterError, AtlasSnapshotError, AtlasViewExistsError, AtlasViewNotFoundError
from nexus.atlas._filter import And, Condition, Everything, Filter, Or, get_path, is_missing, parse_filter, value_key
from nexus.atlas._index import Index, SortedIndex
from nexus.hooks import Clock, Metrics, NoopMetrics, NoopTracer, SystemClock, Tracer

FilterSpec = Filter | Mapping[str, Any] | None
SortSpec = str | Sequence[str | tuple[str, str]] | None

ChangeKind = Literal["insert", "update", "delete"]
SNAPSHOT_FORMAT = "nexus.atlas.snapshot/1"
DEFAULT_COLLECTION = "default"

_canonical = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


class AtlasView(msgspec.Struct, frozen=True):
    """One view: its id, its data (owned by the store: treat it as read-only), and bookkeeping."""

    id: str
    """The view's key within its collection."""
    data: Any
    """The view's content, a JSON value."""
    version: int
    """1 on insert, +1 on every update."""
    created: float
    """When it was inserted (the store's clock, seconds since the epoch)."""
    updated: float
    """When it was last written."""


class QueryResult(msgspec.Struct, frozen=True):
    """A page of views and how many matched in all (before ``limit``/``offset``)."""

    views: list[AtlasView]
    total: int


class AtlasChange(msgspec.Struct, frozen=True):
    """What a subscription is told: one insert, update or delete."""

    kind: Literal["insert", "update", "delete"]
    collection: str
    id: str
    view: AtlasView | None
    """The view after the change (None for a delete)."""
    previous: AtlasView | None
    """The view before the change (None for an insert)."""


class Subscription:
    """A filter and a receiver; iterate it (``async for change in sub``) when it has no callback."""

    def __init__(self, store: AtlasStore, test: Callable[[Any], bool], callback: Callable[[AtlasChange], Any] | None):
        self._store = store
        self._test = test
        self._callback = callback
        self._queue: asyncio.Queue[AtlasChange | None] | None = None if callback else asyncio.Queue()
        self.closed = False

    def _deliver(self, change: AtlasChange) -> None:
        if self._callback is not None:
            self._callback(change)
        elif self._queue is not None:
            self._queue.put_nowait(change)

    def close(self) -> None:
        """Stop receiving changes; an iterator ends after the changes already queued."""
        if self.closed:
            return
        self.closed = True
        self._store._subscriptions.remove(self)
        if self._queue is not None:
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[AtlasChange]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AtlasChange]:
        if self._queue is None:
            raise TypeError("a subscription with a callback cannot be iterated")
        while True:
            change = await self._queue.get()
            if change is None:
                return
            yield change

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AtlasStore:
    """One collection of views.

    Every method is synchronous and never awaits, so each call is atomic with respect to
    other asyncio tasks on the loop: concurrent tasks can insert, update and read freely.

    Args:
        name: The collection's name (used in errors, metrics and snapshots).
        clock: Where ``created``/``updated`` come from (default: the wall clock).
        metrics: Counters ``atlas_writes_total`` and ``atlas_queries_total`` (default: none).
        tracer: Spans around queries (default: none).
        logger: Where subscription callback failures are logged.
    """

    def __init__(
        self,
        name: str = DEFAULT_COLLECTION,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self._clock = clock or SystemClock()
        self._metrics = metrics or NoopMetrics()
        self._tracer = tracer or NoopTracer()
        self._logger = logger or logging.getLogger("nexus.atlas")
        # Skip the per-write metric call entirely on the hot path when nobody listens.
        self._observed = not isinstance(self._metrics, NoopMetrics)
        self._views: dict[str, AtlasView] = {}
        self._indexes: dict[str, Index] = {}
        self._subscriptions: list[Subscription] = []

    # ------------------------------------------------------------------ writes

    def insert(self, key: str, data: Any) -> AtlasView:
        """Add a new view.

        Raises:
            AtlasViewExistsError: a view with this id exists.
        """
        if key in self._views:
            raise AtlasViewExistsError(self.name, key)
        if type(key) is not str or not key:
            raise AtlasFilterError(f"{self.name}: a view id is a non-empty string, got {key!r}")
        now = self._clock.now()
        view = AtlasView(key, data, 1, now, now)
        self._views[key] = view
        for index in self._indexes.values():
            index.add(key, data)
        if self._subscriptions:
            self._notify("insert", view, None)
        if self._observed:
            self._metrics.increment("atlas_writes_total", collection=self.name, op="insert")
        return view

    def update(self, key: str, data: Any) -> AtlasView:
        """Replace a view's data, keeping its id and creation time.

        Raises:
            AtlasViewNotFoundError: no view has this id.
        """
        previous = self._views.get(key)
        if previous is None:
            raise AtlasViewNotFoundError(self.name, key)
        return self._replace(previous, data)

    def upsert(self, key: str, data: Any) -> AtlasView:
        """Insert the view, or update it when it exists."""
        previous = self._views.get(key)
        if previous is None:
            return self.insert(key, data)
        return self._replace(previous, data)

    def _replace(self, previous: AtlasView, data: Any) -> AtlasView:
        key = previous.id
        view = AtlasView(key, data, previous.version + 1, previous.created, self._clock.now())
        self._views[key] = view
        for index in self._indexes.values():
            index.remove(key, previous.data)
            index.add(key, data)
        if self._subscriptions:
            self._notify("update", view, previous)
        if self._observed:
            self._metrics.increment("atlas_writes_total", collection=self.name, op="update")
        return view

    def delete(self, key: str) -> AtlasView:
        """Remove a view and return it as it was.

        Raises:
            AtlasViewNotFoundError: no view has this id.
        """
        previous = self._views.pop(key, None)
        if previous is None:
            raise AtlasViewNotFoundError(self.name, key)
        for index in self._indexes.values():
            index.remove(key, previous.data)
        if self._subscriptions:
            self._notify("delete", None, previous)
        if self._observed:
            self._metrics.increment("atlas_writes_total", collection=self.name, op="delete")
        return previous

    def clear(self) -> None:
        """Remove every view (indexes stay defined; subscribers are not told)."""
        self._views.clear()
        for index in self._indexes.values():
            index.clear()

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> AtlasView | None:
        """The view with this id, or None."""
        return self._views.get(key)

    def has(self, key: str) -> bool:
        return key in self._views

    def __len__(self) -> int:
        return len(self._views)

    def __iter__(self) -> Iterator[AtlasView]:
        """Every view, in id order."""
        for key in sorted(self._views):
            yield self._views[key]

    def query(
        self,
        filter: FilterSpec = None,
        sort: SortSpec = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> QueryResult:
        """The views matching ``filter``, ordered, and the total number that matched.

        Args:
            filter: A filter in the dict language or built with ``where`` (None: all views).
            sort: ``"field"``, ``"-field"`` (descending), or a list of those or of
                ``(field, "asc"|"desc")`` pairs. Without it views come in id order.
                Missing values sort first, then null, booleans, numbers, strings, others.
            limit: At most this many views (None: all).
            offset: Skip this many matching views first.

        Raises:
            AtlasFilterError: a malformed filter, sort, limit or offset.
        """
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise AtlasFilterError(f"limit must be None or an integer >= 0, got {limit!r}")
        if not isinstance(offset, int) or offset < 0:
            raise AtlasFilterError(f"offset must be an integer >= 0, got {offset!r}")
        parsed = parse_filter(filter)
        started = time.perf_counter() if self._observed else 0.0
        with self._tracer.span("atlas.query", collection=self.name):
            ids = self._matching_ids(parsed)
            total = len(ids)
            order = _parse_sort(sort)
            end = None if limit is None else offset + limit
            if not order:
                if end is not None and end < total // 8:
                    page = heapq.nsmallest(end, ids)[offset:]
                else:
                    page = sorted(ids)[offset:end]
                views = [self._views[i] for i in page]
            else:
                chosen = [self._views[i] for i in ids]
                chosen.sort(key=lambda v: v.id)
                # Stable sorts applied from the last key to the first give a multi-key order.
                for path, descending in reversed(order):
                    chosen.sort(key=functools.partial(_view_sort_key, path), reverse=descending)
                views = chosen[offset:end]
        if self._observed:
            self._metrics.increment("atlas_queries_total", collection=self.name)
            self._metrics.observe("atlas_query_seconds", time.perf_counter() - started, collection=self.name)
        return QueryResult(views, total)

    def count(self, filter: FilterSpec = None) -> int:
        """How many views match."""
        return len(self._matching_ids(parse_filter(filter)))

    def _matching_ids(self, parsed: Filter) -> Sequence[str] | set[str]:
        if isinstance(parsed, Everything):
            return list(self._views)
        candidates, exact = self._plan(parsed)
        if candidates is None:
            test = parsed.compile()
            return [k for k, v in self._views.items() if test(v.data)]
        if exact:
            return candidates
        test = parsed.compile()
        views = self._views
        return [k for k in candidates if test(views[k].data)]

    def _plan(self, node: Filter) -> tuple[set[str] | None, bool]:
        """Candidate ids from indexes (None: scan everything) and whether they are the exact answer."""
        if isinstance(node, Condition):
            index = self._indexes.get(node.field)
            if index is not None and index.answers(node):
                return index.lookup(node), True
            return None, False
        if isinstance(node, And):
            planned = [self._plan(p) for p in node.parts]
            usable = sorted((c for c, _ in planned if c is not None), key=len)
            if not usable:
                return None, False
            result = set(usable[0])
            for other in usable[1:]:
                result &= other
            return result, all(c is not None and e for c, e in planned)
        if isinstance(node, Or):
            planned = [self._plan(p) for p in node.parts]
            if any(c is None for c, _ in planned):
                return None, False
            union: set[str] = set()
            for c, _ in planned:
                union |= c or set()
            result = union
            return result, all(e for _, e in planned)
        return None, False

    # ------------------------------------------------------------------ indexes

    def create_index(self, field: str, kind: Literal["hash", "sorted"] = "hash") -> None:
        """Index a dotted field: ``hash`` serves ``eq``/``in``; ``sorted`` also serves ranges.

        Creating an index that exists with the same kind does nothing.
        """
        existing = self._indexes.get(field)
        if existing is not None and existing.kind == kind:
            return
        if kind not in ("hash", "sorted"):
            raise AtlasFilterError(f"index kind must be 'hash' or 'sorted', got {kind!r}")
        parse_filter({field: {"exists": True}})
        index: Index = SortedIndex(field) if kind == "sorted" else Index(field)
        for key, view in self._views.items():
            index.add(key, view.data)
        self._indexes[field] = index

    def drop_index(self, field: str) -> None:
        self._indexes.pop(field, None)

    def indexes(self) -> dict[str, str]:
        """Indexed fields and their kinds."""
        return {f: i.kind for f, i in sorted(self._indexes.items())}

    # ------------------------------------------------------------------ subscriptions

    def subscribe(
        self, filter: FilterSpec = None, callback: Callable[[AtlasChange], Any] | None = None
    ) -> Subscription:
        """Be told of every insert, update and delete whose view matches ``filter``.

        An update is reported when the view matches before or after it. With a callback it
        is called synchronously inside the write (a failing callback is logged, the write
        stands); without one, iterate the subscription: ``async for change in sub``.
        Close it (or use ``with``) to stop.
        """
        sub = Subscription(self, parse_filter(filter).compile(), callback)
        self._subscriptions.append(sub)
        return sub

    def _notify(
        self, kind: Literal["insert", "update", "delete"], view: AtlasView | None, previous: AtlasView | None
    ) -> None:
        change: AtlasChange | None = None
        for sub in list(self._subscriptions):
            if (view is not None and sub._test(view.data)) or (previous is not None and sub._test(previous.data)):
                if change is None:
                    subject = view if view is not None else previous
                    assert subject is not None  # the test above matched one of them
                    change = AtlasChange(kind, self.name, subject.id, view, previous)
                try:
                    sub._deliver(change)
                except Exception:
                    self._logger.exception(
                        "atlas %s: a subscription callback failed on %s %r", self.name, kind, change.id
                    )
                    if self._observed:
                        self._metrics.increment("atlas_subscription_errors_total", collection=self.name)

    # ------------------------------------------------------------------ snapshots

    def _dump(self) -> dict[str, Any]:
        views = self._views
        return {
            "indexes": [[f, k] for f, k in self.indexes().items()],
            "views": [[v.id, v.data, v.version, v.created, v.updated] for v in (views[k] for k in sorted(views))],
        }

    def _load(self, dumped: Mapping[str, Any]) -> None:
        views: dict[str, AtlasView] = {}
        for row in dumped["views"]:
            key, data, version, created, updated = row
            views[key] = AtlasView(key, data, version, created, updated)
        self._views = views
        self._indexes = {}
        for field, kind in dumped.get("indexes", []):
            self.create_index(field, kind)

    def _hash_into(self, h: Any, data_only: bool) -> None:
        views = self._views
        encode = _canonical.encode
        for key in sorted(views):
            v = views[key]
            if data_only:
                h.update(encode([v.id, v.data]))
            else:
                h.update(encode([v.id, v.data, v.version, v.created, v.updated]))
            h.update(b"\n")

    def digest(self, *, data_only: bool = True) -> str:
        """sha256 (hex) of the collection's content in id order.

        With ``data_only`` (the default) only ids and data count, so two stores that went
        through the same writes agree whatever the order of inserts and the clock said.
        """
        h = hashlib.sha256()
        self._hash_into(h, data_only)
        return h.hexdigest()

    def snapshot(self) -> bytes:
        """Deterministic bytes of the whole collection (see ``Atlas.snapshot``)."""
        atlas = Atlas()
        atlas._collections[self.name] = self
        return atlas.snapshot()

    def restore(self, snapshot: bytes) -> None:
        """Replace the content with a snapshot taken by ``snapshot`` (of a store of this name)."""
        body = _read_snapshot(snapshot)
        dumped = body["collections"].get(self.name)
        if dumped is None:
            raise AtlasSnapshotError(f"the snapshot holds no collection {self.name!r}")
        self._load(dumped)


class Atlas:
    """Named collections of views (one per view type), sharing a clock, metrics and tracer.

    ``atlas.collection("executions")`` returns the collection, creating it on first use.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self._metrics = metrics
        self._tracer = tracer
        self._logger = logger
        self._collections: dict[str, AtlasStore] = {}

    def collection(self, name: str) -> AtlasStore:
        """The collection ``name``, created empty on first use."""
        store = self._collections.get(name)
        if store is None:
            if not isinstance(name, str) or not name:
                raise AtlasFilterError(f"a collection name is a non-empty string, got {name!r}")
            store = AtlasStore(name, clock=self.clock, metrics=self._metrics, tracer=self._tracer, logger=self._logger)
            self._collections[name] = store
        return store

    __getitem__ = collection

    def collections(self) -> list[str]:
        return sorted(self._collections)

    def __contains__(self, name: object) -> bool:
        return name in self._collections

    def clear(self) -> None:
        """Remove every collection."""
        self._collections.clear()

    def digest(self, *, data_only: bool = True) -> str:
        """sha256 (hex) over every non-empty collection in name order (see ``AtlasStore.digest``)."""
        h = hashlib.sha256()
        for name in sorted(self._collections):
            store = self._collections[name]
            if not len(store):
                continue
            h.update(b"\x00collection\x00" + name.encode() + b"\x00")
            store._hash_into(h, data_only)
        return h.hexdigest()

    def snapshot(self) -> bytes:
        """The whole store as deterministic JSON bytes: collections, indexes and views by id.

        The snapshot carries its data digest; ``restore`` checks it.
        """
        body = {
            "format": SNAPSHOT_FORMAT,
            "digest": self.digest(),
            "collections": {name: self._collections[name]._dump() for name in sorted(self._collections)},
        }
        return _canonical.encode(body)

    def restore(self, snapshot: bytes) -> None:
        """Replace every collection with the snapshot's content.

        Raises:
            AtlasSnapshotError: the bytes are not a snapshot, or their digest does not match.
        """
        body = _read_snapshot(snapshot)
        restored = Atlas(clock=self.clock, metrics=self._metrics, tracer=self._tracer, logger=self._logger)
        for name, dumped in body["collections"].items():
            restored.collection(name)._load(dumped)
        if restored.digest() != body.get("digest"):
            raise AtlasSnapshotError(
                f"snapshot digest {body.get('digest')!r} does not match its content ({restored.digest()})"
            )
        self._collections = restored._collections


def _read_snapshot(snapshot: bytes) -> dict[str, Any]:
    try:
        body = _decoder.decode(snapshot)
    except msgspec.DecodeError as exc:
        raise AtlasSnapshotError(f"not an Atlas snapshot: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != SNAPSHOT_FORMAT:
        raise AtlasSnapshotError(f"not an Atlas snapshot (format {SNAPSHOT_FORMAT!r} expected)")
    return body


def _parse_sort(sort: SortSpec) -> list[tuple[tuple[str, ...], bool]]:
    if sort is None:
        return []
    items = [sort] if isinstance(sort, str) else list(sort)
    out: list[tuple[tuple[str, ...], bool]] = []
    for item in items:
        if isinstance(item, str):
            descending = item.startswith("-")
            field = item[1:] if descending else item
        elif isinstance(item, tuple | list) and len(item) == 2 and item[1] in ("asc", "desc"):
            field, descending = item[0], item[1] == "desc"
        else:
            raise AtlasFilterError(f"sort item {item!r}: use 'field', '-field' or (field, 'asc'|'desc')")
        if not isinstance(field, str) or not field:
            raise AtlasFilterError(f"sort item {item!r}: the field is empty")
        out.append((tuple(field.split(".")), descending))
    return out


def _sort_key(value: Any) -> tuple[int, Any]:
    if is_missing(value):
        return (-1, 0)
    return value_key(value)


def _view_sort_key(path: tuple[str, ...], view: Any) -> Any:
    return _sort_key(get_path(view.data, path))
