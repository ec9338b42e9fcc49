"""What KAM's route modules share: the service, its settings, the state fold and how to append to it.

Each route module (``accounts``, ``requests``, ``delivery``) has an ``install(ctx)`` that declares
its routes on ``ctx.service``. A handler changes nothing in memory: it appends events with
``ctx.append`` and answers from ``ctx.state`` once the fold has them, so every replica tells the
same story and a restart loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexus.auth import SESSION_KEY_PREFIX, KeyInfo
from nexus.eventlog import ANY
from nexus.proto import CloudEvent
from nexus.replay import Follower, LiveFold
from nexus.runtime import Handler, Service
from nexus.services.kam.settings import KamSettings
from nexus.services.kam.state import KAM_TYPES, KamState

__all__ = ["CLIENT_SCOPES", "PREFIXES", "SESSION_KEY_PREFIX", "Follower", "KamContext"]

PREFIXES = ("/api", "/api/kam")
"""KAM serves each of its routes under both: ``/api/...`` and the seed frontend's ``/api/kam/...``."""

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


@dataclass
class KamContext:
    """KAM's shared parts; built by ``bootstrap``, handed to every route module's ``install``.

    The state is a ``nexus.replay.LiveFold`` of KAM's events: loaded at start, following the
    log, with read-your-writes appends (``append``, ``caught_up``) and followers (``on_event``).
    """

    service: Service
    settings: KamSettings
    fold: LiveFold[KamState] = field(init=False)

    def __post_init__(self) -> None:
        self.fold = LiveFold(self.service.log, KamState(), types=KAM_TYPES, name="kam")

    @property
    def state(self) -> KamState:
        """Everything KAM knows, as folded so far."""
        return self.fold.state

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

    @property
    def followed_types(self) -> tuple[str, ...] | None:
        """The event types KAM reads from the log (``LiveFold.followed_types``)."""
        return self.fold.followed_types

    def on_event(self, follower: Follower, types: Iterable[str] | None = ()) -> None:
        """Hand ``follower`` KAM's events and those of ``types`` after folding each
        (``LiveFold.on_event``): the execution watcher asks for the workflow's end types."""
        self.fold.on_event(follower, types)

    async def load(self) -> None:
        """Fold KAM's events already in the log (at start, before serving)."""
        await self.fold.load()

    async def follow(self) -> None:
        """Fold the events appended from now on, by any replica, until cancelled."""
        await self.fold.follow()

    async def append(self, stream: str, events: Sequence[CloudEvent], expected_version: int = ANY) -> list[CloudEvent]:
        """Append ``events`` to ``stream``; returns once this replica's state has folded them."""
        return await self.fold.append(stream, events, expected_version)

    async def caught_up(self, position: int) -> None:
        """Return once the state has folded every followed event up to ``position``."""
        await self.fold.caught_up(position)
