"""What KAM's route modules share: the service, its settings, the state fold and how to append to it.

Each route module (``accounts``, ``requests``, ``delivery``) has an ``install(ctx)`` that declares
its routes on ``ctx.service``. A handler changes nothing in memory: it appends events with
``ctx.append`` and answers from ``ctx.state`` once the fold has them, so every replica tells the
same story and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexus.auth import KeyInfo
from nexus.eventlog import ANY
from nexus.proto import CloudEvent
from nexus.replay import tail
from nexus.runtime import Handler, Service
from nexus.services.kam.settings import KamSettings
from nexus.services.kam.state import KAM_TYPES, KamState

__all__ = ["CLIENT_SCOPES", "PREFIXES", "SESSION_KEY_PREFIX", "Follower", "KamContext"]

PREFIXES = ("/api", "/api/kam")
"""KAM serves each of its routes under both: ``/api/...`` and the seed frontend's ``/api/kam/...``."""

SESSION_KEY_PREFIX = "session:"
"""``KeyInfo.key_id`` of a caller who presented a login session: ``session:<session id>``."""

CLIENT_SCOPES = (
    "requests:read",
    "requests:write",
    "templates:read",
    "deliverables:read",
    "costs:read",
    "notifications:read",
    "audit:read",
    "clients:read",
)
"""What a client user's session may do, and what a key issued by KAM may hold (a subset)."""

_CATCH_UP_SECONDS = 10.0
_CATCH_UP_PAGE = 1000

Follower = Callable[[CloudEvent], Awaitable[None] | None]


@dataclass
class KamContext:
    """KAM's shared parts; built by ``bootstrap``, handed to every route module's ``install``."""

    service: Service
    settings: KamSettings
    state: KamState = field(default_factory=KamState)
    _followers: list[Follower] = field(default_factory=list)
    _extra_types: list[str] = field(default_factory=list)
    _every_type: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _catching: asyncio.Future[None] | None = None
    _covered: int = 0
    """A log position up to which every followed event is folded (``caught_up`` sets it; the
    fold's own position moves only with the events it folds)."""

    @property
    def source(self) -> str:
        """The ``source`` of KAM's events."""
        return f"nexus/{self.service.name}"

    def route(self, method: str, path: str, **declaration: Any) -> Callable[[Handler], Handler]:
        """``Service.route`` under each of PREFIXES: ``ctx.route("GET", "/requests", ...)`` serves
        ``/api/requests`` and ``/api/kam/requests`` with the same handler and declaration."""

        def register(handler: Handler) -> Handler:
            for prefix in PREFIXES:
                self.service.route(method, prefix + path, **declaration)(handler)
            return handler

        return register

    def actor(self, info: KeyInfo) -> str:
        """Who a caller is (for ``created_by`` and the audit): ``user:<id>``, ``key:<id>`` or ``worker:<name>``."""
        if info.key_id.startswith(SESSION_KEY_PREFIX):
            session = self.state.sessions.get(info.key_id.removeprefix(SESSION_KEY_PREFIX))
            return f"user:{session.user_id}" if session is not None else info.key_id
        return f"worker:{info.owner}" if info.kind == "worker" else f"key:{info.key_id}"

    async def load(self) -> None:
        """Fold KAM's events already in the log (at start, before serving)."""
        # The head is read first: an event appended while the log is read is then folded by
        # the reading or by ``follow``, never skipped by a head read after the reading ended.
        head = await self.service.log.head()
        async for batch in self.service.log.iter_all(1, types=KAM_TYPES):
            for event in batch:
                self.state.apply(event)
        self.state.position = max(self.state.position, head)
        self._covered = self.state.position

    @property
    def followed_types(self) -> tuple[str, ...] | None:
        """The event types KAM reads from the log: its own and those its followers asked for
        (None: every type, when a follower asked for all)."""
        if self._every_type:
            return None
        return tuple(dict.fromkeys((*KAM_TYPES, *self._extra_types)))

    async def follow(self) -> None:
        """Fold the events appended from now on, by any replica, until cancelled.

        Only ``followed_types`` are read: the log filters them, so the workflow's hundreds of
        step events a second cost KAM nothing."""
        await tail(
            self.service.log,
            self._observe,
            start=lambda: self.state.position + 1,
            name="kam",
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

    def on_event(self, follower: Follower, types: Iterable[str] | None = ()) -> None:
        """Also hand ``follower(event)`` (sync or async) the events of KAM's fold and of ``types``
        (None: every event of the log), after folding each.

        The execution watcher learns that a workflow ended this way (it asks for the workflow's
        end types), and the notifications stream learns of request transitions. A follower must
        not wait for the fold (it runs inside it): work that appends is queued, not awaited."""
        if types is None:
            self._every_type = True
        else:
            self._extra_types.extend(types)
        self._followers.append(follower)

    async def append(self, stream: str, events: Sequence[CloudEvent], expected_version: int = ANY) -> list[CloudEvent]:
        """Append ``events`` to ``stream`` and return once this replica's state has folded them.

        Raises what ``EventLog.append`` raises (ConcurrencyError when ``expected_version`` is
        not the stream's version), and TimeoutError when the fold lags more than 10 s behind."""
        stored = await self.service.log.append(stream, list(events), expected_version)
        last = max((e.position or 0) for e in stored) if stored else 0
        await self.caught_up(last)
        return stored

    async def caught_up(self, position: int) -> None:
        """Return once the state has folded every followed event up to ``position``.

        The events the tail has not handed over yet are read here and folded (in order, under
        the fold's lock; the tail skips them later). Waiting for the tail instead would wait for
        ever when ``position`` is an event KAM does not follow (another service's), since a
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
        head = await self.service.log.head()
        async with self._lock:
            while True:
                batch = await self.service.log.read_all(self.state.position + 1, _CATCH_UP_PAGE, self.followed_types)
                for event in batch:
                    await self._observe_locked(event)
                if len(batch) < _CATCH_UP_PAGE:
                    break
        self._covered = max(self._covered, head)
