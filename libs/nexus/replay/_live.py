"""``LiveFold``: a service's in-memory state, loaded from the log at start and kept current by following it.

A service that answers from memory (KAM, the studio) keeps one fold of its own events. Every
replica builds it at start from the log and follows the log from there (``tail``, filtered to
the types the fold and its followers read), so whatever one replica appends every other one
folds a moment later, and a restart loses nothing. A handler changes nothing in memory: it
appends events with ``append``, which returns once this replica's fold has them
(read-your-writes), and answers from the state::

    live = LiveFold(log, StudioState(), types=STUDIO_TYPES)
    await live.load()                      # at start, before serving
    service.background(lambda _: live.follow())
    [stored] = await live.append("blob-1", [event], expected_version=3)
    live.state.blobs["1"]                  # already has it

The state is any object with ``apply(event)`` (ignoring an event at or below its ``position``)
and ``position`` (the log position of the last event it folded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from nexus.eventlog import ANY, EventLog
from nexus.proto import CloudEvent
from nexus.replay._tail import tail

__all__ = ["EventFold", "FoldState", "Follower", "LiveFold"]

Follower = Callable[[CloudEvent], Awaitable[None] | None]

_CATCH_UP_SECONDS = 10.0
_CATCH_UP_PAGE = 1000


class FoldState(Protocol):
    """What ``LiveFold`` needs of a state."""

    position: int

    def apply(self, event: CloudEvent) -> None: ...


S = TypeVar("S", bound=FoldState)


class EventFold:
    """Base of a service's state: ``apply`` folds each event once, in log order, by its type.

    A subclass sets ``handlers`` (event type → the method folding it) after its body; events of
    other types are skipped, and an event at or below ``position`` (already folded) is ignored::

        class StudioState(EventFold):
            def _blob_created(self, event: CloudEvent) -> None: ...

        StudioState.handlers = {type_of(BlobCreated): StudioState._blob_created}
    """

    handlers: ClassVar[Mapping[str, Callable[[Any, CloudEvent], None]]] = {}

    def __init__(self) -> None:
        self.position = 0
        """The log position of the last event folded."""

    def apply(self, event: CloudEvent) -> None:
        """Fold one event (events of other types are ignored; a repeated position is ignored)."""
        if event.position is not None:
            if event.position <= self.position:
                return
            self.position = event.position
        handler = self.handlers.get(event.type)
        if handler is not None:
            handler(self, event)


class LiveFold(Generic[S]):
    """A state kept current from the log; see the module.

    Args:
        log: The event log.
        state: The empty state (its ``apply`` folds one event).
        types: The event types the state folds.
        name: Names the follower in log lines.
    """

    def __init__(self, log: EventLog, state: S, *, types: Iterable[str], name: str = "fold") -> None:
        self.log = log
        self.state = state
        self.name = name
        self._types = tuple(types)
        self._followers: list[Follower] = []
        self._extra_types: list[str] = []
        self._every_type = False
        self._lock = asyncio.Lock()
        self._catching: asyncio.Future[None] | None = None
        self._covered = 0
        """A log position up to which every followed event is folded (``caught_up`` sets it;
        the state's own position moves only with the events it folds)."""

    @property
    def followed_types(self) -> tuple[str, ...] | None:
        """The event types read from the log: the state's and those its followers asked for
        (None: every type, when a follower asked for all)."""
        if self._every_type:
            return None
        return tuple(dict.fromkeys((*self._types, *self._extra_types)))

    def on_event(self, follower: Follower, types: Iterable[str] | None = ()) -> None:
        """Also hand ``follower(event)`` (sync or async) the state's events and those of ``types``
        (None: every event of the log), after folding each.

        A follower must not wait for the fold (it runs inside it): work that appends is queued,
        not awaited."""
        if types is None:
            self._every_type = True
        else:
            self._extra_types.extend(types)
        self._followers.append(follower)

    async def load(self) -> None:
        """Fold the state's events already in the log (at start, before serving)."""
        # The head is read first: an event appended while the log is read is then folded by
        # the reading or by ``follow``, never skipped by a head read after the reading ended.
        head = await self.log.head()
        async for batch in self.log.iter_all(1, types=self._types):
            for event in batch:
                self.state.apply(event)
        self.state.position = max(self.state.position, head)
        self._covered = self.state.position

    async def follow(self) -> None:
        """Fold the events appended from now on, by any replica, until cancelled.

        Only ``followed_types`` are read: the log filters them, so a busy log costs the fold
        only what it reads."""
        await tail(
            self.log,
            self._observe,
            start=lambda: self.state.position + 1,
            name=self.name,
            types=self.followed_types,
        )

    async def _observe(self, event: CloudEvent) -> None:
        async with self._lock:
            await self._observe_locked(event)

    async def _observe_locked(self, event: CloudEvent) -> None:
        # An event ``caught_up`` already read is handed over again by the tail: skip it whole,
        # so followers see each event once.
        if event.position is not None and event.position <= self.state.position:
            return
        self.state.apply(event)
        for follower in self._followers:
            result = follower(event)
            if result is not None:
                await result

    async def append(self, stream: str, events: Sequence[CloudEvent], expected_version: int = ANY) -> list[CloudEvent]:
        """Append ``events`` to ``stream`` and return once this replica's state has folded them.

        Raises what ``EventLog.append`` raises (ConcurrencyError when ``expected_version`` is
        not the stream's version), and TimeoutError when catching up takes more than 10 s."""
        stored = await self.log.append(stream, list(events), expected_version)
        last = max((e.position or 0) for e in stored) if stored else 0
        await self.caught_up(last)
        return stored

    async def caught_up(self, position: int) -> None:
        """Return once the state has folded every followed event up to ``position``.

        The events the tail has not handed over yet are read here and folded (in order, under
        the fold's lock; the tail skips them later). Waiting for the tail instead would wait for
        ever when ``position`` is an event the fold does not follow (another service's), since a
        filtered tail never hands that one over. Concurrent callers share one catch-up at a
        time, so a burst of them (a flood of unknown session tokens, say) costs one read of
        the log, not one each under the lock.

        Raises:
            TimeoutError: the catch-up took longer than 10 s.
        """
        async with asyncio.timeout(_CATCH_UP_SECONDS):
            while max(self.state.position, self._covered) < position:
                if self._catching is None or self._catching.done():
                    self._catching = asyncio.ensure_future(self._catch_up())
                await asyncio.shield(self._catching)

    async def _catch_up(self) -> None:
        # Every committed event up to the head read here is in the log, so once the followed
        # ones after the fold's position are folded, the fold covers the head.
        head = await self.log.head()
        async with self._lock:
            while True:
                batch = await self.log.read_all(self.state.position + 1, _CATCH_UP_PAGE, self.followed_types)
                for event in batch:
                    await self._observe_locked(event)
                if len(batch) < _CATCH_UP_PAGE:
                    break
        self._covered = max(self._covered, head)
