"""``memory://``: the in-process adapter. It defines the semantics the others must match."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

from nexus.eventlog import chain
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
from nexus.eventlog._errors import EventLogClosedError
from nexus.eventlog._port import ANY, GENESIS_HASH, EventLog
from nexus.proto import CloudEvent


class MemoryEventLog(EventLog):
    """All events in a list; appends are atomic because they never yield to the event loop."""

    def __init__(self, url: str = "memory://", *, max_event_bytes: int | None = None) -> None:
        self.url = url
        self.max_event_bytes = resolve_max_event_bytes(max_event_bytes)
        self._events: list[CloudEvent] = []
        self._streams: dict[str, list[CloudEvent]] = {}
        self._by_id: dict[str, CloudEvent] = {}
        self._changed = asyncio.Event()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogClosedError("the event log is closed")

    async def append(
        self, stream_id: str, events: Sequence[CloudEvent], expected_version: int = ANY
    ) -> list[CloudEvent]:
        self._check_open()
        check_append(stream_id, events, expected_version)
        contents = encode_contents(events, stream_id=stream_id, limit=self.max_event_bytes)
        stored = self._already_stored(stream_id, events)
        if stored is not None:
            return stored
        stream = self._streams.get(stream_id, [])
        check_expected(stream_id, expected_version, len(stream))
        prevhash = stream[-1].hash if stream else GENESIS_HASH
        out: list[CloudEvent] = []
        for offset, event in enumerate(events):
            # Looked up on the module so a test can inject a failure in the middle of a batch.
            placed = chain.seal(
                event,
                stream_id=stream_id,
                version=len(stream) + offset + 1,
                position=len(self._events) + offset + 1,
                prevhash=prevhash or GENESIS_HASH,  # a stored event always has its hash
                content=contents[offset][1].decode(),
            )
            prevhash = placed.hash
            out.append(placed)
        self._streams.setdefault(stream_id, []).extend(out)
        self._events.extend(out)
        for event in out:
            self._by_id[event.id] = event
        self._changed.set()
        self._changed = asyncio.Event()
        return out

    def _already_stored(self, stream_id: str, events: Sequence[CloudEvent]) -> list[CloudEvent] | None:
        """The stored records when the whole batch is a retry; None when none is stored."""
        return match_stored(stream_id, events, [self._by_id.get(e.id) for e in events])

    async def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> list[CloudEvent]:
        self._check_open()
        check_position("from_version", from_version)
        check_limit(limit)
        events = self._streams.get(stream_id, [])
        start = max(from_version, 1) - 1
        end = None if limit is None else start + limit
        return events[start:end]

    async def read_all(
        self, from_position: int = 0, limit: int | None = None, types: Iterable[str] | None = None
    ) -> list[CloudEvent]:
        self._check_open()
        check_position("from_position", from_position)
        check_limit(limit)
        wanted = check_types(types)
        start = max(from_position, 1) - 1
        if wanted is None:
            end = None if limit is None else start + limit
            return self._events[start:end]
        out: list[CloudEvent] = []
        for event in self._events[start:]:
            if event.type in wanted:
                out.append(event)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def head(self) -> int:
        self._check_open()
        return len(self._events)

    async def stream_version(self, stream_id: str) -> int:
        self._check_open()
        return len(self._streams.get(stream_id, ()))

    async def get_event(self, event_id: str) -> CloudEvent | None:
        self._check_open()
        return self._by_id.get(event_id)

    async def subscribe(
        self, from_position: int = 0, *, types: Iterable[str] | None = None
    ) -> AsyncIterator[CloudEvent]:
        check_position("from_position", from_position)
        wanted = check_types(types)
        position = max(from_position, 1)
        while True:
            self._check_open()
            changed = self._changed
            batch = self._events[position - 1 :]
            # Past the whole batch, matching or not: it is all committed (appends are atomic here).
            position += len(batch)
            for event in batch:
                if wanted is None or event.type in wanted:
                    yield event
            if not batch:
                await changed.wait()

    async def close(self) -> None:
        self._closed = True
        self._changed.set()
