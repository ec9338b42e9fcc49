"""The event log port: what every adapter (memory, sqlite, mongodb) provides."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Final

from nexus.proto import CloudEvent

ANY: Final = -2
"""``expected_version``: append whatever version the stream is at."""
NO_STREAM: Final = -1
"""``expected_version``: the stream must not exist yet (same as 0)."""
STREAM_EXISTS: Final = -4
"""``expected_version``: the stream must already hold at least one event."""

GENESIS_HASH: Final = "0" * 64
"""``prevhash`` of the first event of every stream."""

DEFAULT_MAX_EVENT_BYTES: Final = 512 * 1024
"""The default per-event size limit (``NEXUS_MAX_EVENT_BYTES``): half of NATS's default
``max_payload`` (1 MiB), leaving room for the relay's headers and for a server configured
with a somewhat smaller limit."""


class EventLog(abc.ABC):
    """An append-only log of CloudEvents, partitioned into streams, with a global order.

    Versions are 1-based per stream; positions are 1-based, global and strictly increasing.
    Every stored event carries ``streamid``, ``streamversion``, ``position``, ``prevhash`` and
    ``hash`` (see ``nexus.eventlog.chain``).
    """

    url: str = ""
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    """The largest event (stored and relayed form, in bytes) an append accepts; larger ones
    raise EventTooLargeError. Set from ``NEXUS_MAX_EVENT_BYTES`` when the adapter is opened."""

    @abc.abstractmethod
    async def append(
        self, stream_id: str, events: Sequence[CloudEvent], expected_version: int = ANY
    ) -> list[CloudEvent]:
        """Append ``events`` to ``stream_id`` atomically and return them as stored.

        ``expected_version`` is the stream's current version (0 or NO_STREAM: it must not
        exist), ANY, or STREAM_EXISTS. Appending events whose ids are all already stored in
        this stream with the same content writes nothing and returns the stored records.

        Raises:
            ConcurrencyError: the stream is not at ``expected_version``; nothing was written.
            DuplicateEventError: an id is stored with other content; nothing was written.
            EventLogArgumentError: empty stream id, empty batch, data that is not JSON.
            EventTooLargeError: an event is larger than ``max_event_bytes``; nothing was written.
            EventLogUnavailableError: the store failed; nothing was written.
        """

    @abc.abstractmethod
    async def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> list[CloudEvent]:
        """The events of one stream from ``from_version`` (inclusive), in version order."""

    @abc.abstractmethod
    async def read_all(
        self, from_position: int = 0, limit: int | None = None, types: Iterable[str] | None = None
    ) -> list[CloudEvent]:
        """Committed events with position >= ``from_position``, in position order.

        Only events below the log's committed watermark are returned: no event with a lower
        position can appear later, so a reader that resumes after the last position it saw
        never skips one. ``types`` keeps only events of those types.
        """

    async def iter_all(
        self, from_position: int = 0, *, types: Iterable[str] | None = None, batch_size: int = 5000
    ) -> AsyncIterator[list[CloudEvent]]:
        """Batches of ``read_all`` from ``from_position`` up to the head at the time of each call."""
        wanted = list(types) if types is not None else None
        position = max(from_position, 1)
        while True:
            batch = await self.read_all(position, batch_size, wanted)
            if not batch:
                return
            yield batch
            position = (batch[-1].position or position) + 1

    @abc.abstractmethod
    async def head(self) -> int:
        """The position of the last committed event (0 when the log is empty)."""

    @abc.abstractmethod
    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it does not exist)."""

    @abc.abstractmethod
    async def get_event(self, event_id: str) -> CloudEvent | None:
        """The stored event with this id, or None."""

    @abc.abstractmethod
    def subscribe(self, from_position: int = 0, *, types: Iterable[str] | None = None) -> AsyncIterator[CloudEvent]:
        """Committed events from ``from_position`` on, in position order, waiting for new ones.

        Never skips an event and never yields one twice, also with concurrent writers.

        ``types`` keeps only events of those types (an empty collection: none). The filter runs
        where it is cheap (in the store's query), so a follower that needs a few types of a busy
        log neither fetches nor decodes the others. When a read finds no matching event, the
        subscription still moves past the events that read covered, up to the committed
        watermark: a rare type does not make it scan the same events again on every wake.
        """

    async def ping(self) -> None:
        """Raise EventLogUnavailableError when the store does not answer (used by /readyz)."""
        await self.head()

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the store; later calls raise EventLogClosedError."""

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
