"""What KAM's route modules share: the service, its settings, the state fold and how to append to it.

Each route module (``accounts``, ``requests``, ``delivery``) has an ``install(ctx)`` that declares
its routes on ``ctx.service``. A handler changes nothing in memory: it appends events with
``ctx.append`` and answers from ``ctx.state`` once the fold has them, so every replica tells the
same story and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
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
)
"""What a client user's session may do, and what a key issued by KAM may hold (a subset)."""

_CATCH_UP_SECONDS = 10.0

Follower = Callable[[CloudEvent], Awaitable[None] | None]


@dataclass
class KamContext:
    """KAM's shared parts; built by ``bootstrap``, handed to every route module's ``install``."""

    service: Service
    settings: KamSettings
    state: KamState = field(default_factory=KamState)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _followers: list[Follower] = field(default_factory=list)

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

    async def follow(self) -> None:
        """Fold the events appended from now on, by any replica, until cancelled."""
        await tail(self.service.log, self._observe, start=lambda: self.state.position + 1, name="kam")

    async def _observe(self, event: CloudEvent) -> None:
        self.state.apply(event)
        for follower in self._followers:
            result = follower(event)
            if result is not None:
                await result
        async with self._changed:
            self._changed.notify_all()

    def on_event(self, follower: Follower) -> None:
        """Also hand every event the fold sees to ``follower(event)`` (sync or async), after folding it.

        The execution watcher learns that a workflow ended this way, and the notifications
        stream learns of request transitions."""
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
        """Wait until the state has folded the log up to ``position`` (TimeoutError after 10 s)."""
        if self.state.position >= position:
            return
        async with asyncio.timeout(_CATCH_UP_SECONDS), self._changed:
            await self._changed.wait_for(lambda: self.state.position >= position)
