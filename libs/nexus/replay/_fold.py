"""A service's in-memory fold as a replay projection, checked against the fold as the service builds it.

A service keeps state in memory (the executions view, the registry, the keys, the triggers, ...)
that it builds at start from the log and keeps current by following it. ``FoldProjection``
registers that state with ``nexus replay``: the replay feeds the log's events, in order, to
the service's own fold code, and the views are the fold's state, one Atlas view per entity.
``nexus replay --verify`` compares their digest with the state the service's start-up path
(``running``) builds from the same log, so a fold that loses, repeats or misreads events is
named, with its count and both digests.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from nexus.atlas import Atlas
from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.replay._projection import ALL_EVENTS, Handler, Projection

__all__ = ["FoldCheck", "FoldProjection", "state_digest"]


def _plain(value: Any) -> Any:
    """JSON-able builtins of a fold's value (Structs, dataclasses, tuples, sets in sorted order)."""
    return msgspec.to_builtins(value, order="sorted")


def state_digest(collection: str, state: Mapping[str, Any]) -> str:
    """The Atlas digest of ``state`` (entity id → document) as collection ``collection``."""
    atlas = Atlas()
    _mirror(atlas, collection, state)
    return atlas.digest()


def _mirror(atlas: Atlas, collection: str, state: Mapping[str, Any]) -> None:
    store = atlas.collection(collection)
    store.clear()
    for entity, document in state.items():
        store.upsert(entity, _plain(document))


class FoldCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The running fold's side of a verification."""

    entities: int
    """How many entities (executions, keys, ...) the fold holds."""
    digest: str


class FoldProjection(Projection, abc.ABC):
    """Subclass it for each fold a service keeps in memory, and register it.

    Give it ``name``, ``collection``, ``reads`` (the event types the fold reads; None: every
    event), and implement ``new_fold`` (an empty fold), ``fold_event`` (the service's own code
    applying one event), ``state`` (the fold's content: entity id → a document, the same for
    a fold built either way) and ``running`` (the fold built as the service builds it at start).

    The state lives in the fold; ``sync`` writes it into the runner's Atlas before a digest or
    a checkpoint. A fold object cannot be restored from an Atlas snapshot, so these projections
    always replay from position 0 (``resumable`` is False).
    """

    resumable: ClassVar[bool] = False
    collection: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...] | None] = None

    def __init__(self) -> None:
        self.fold = self.new_fold()

    @abc.abstractmethod
    def new_fold(self) -> Any:
        """An empty fold, as the service creates it."""

    @abc.abstractmethod
    def fold_event(self, fold: Any, event: CloudEvent) -> None:
        """Apply one event with the service's code."""

    @abc.abstractmethod
    def state(self, fold: Any) -> Mapping[str, Any]:
        """The fold's content: entity id → document (Structs and dataclasses are converted)."""

    @abc.abstractmethod
    async def running(self, log: EventLog) -> Any:
        """The fold built from ``log`` the way the service builds it when it starts."""

    def handlers(self) -> dict[str, Handler]:
        def on_event(event: CloudEvent, atlas: Atlas) -> None:
            self.fold_event(self.fold, event)

        if self.reads is None:
            return {ALL_EVENTS: on_event}
        return dict.fromkeys(self.reads, on_event)

    @property
    def event_types(self) -> frozenset[str] | None:
        return None if self.reads is None else frozenset(self.reads)

    def sync(self, atlas: Atlas) -> None:
        _mirror(atlas, self.collection or self.name, self.state(self.fold))

    def check(self, fold: Any) -> FoldCheck:
        """Entities and digest of a fold (the same digest the replay's Atlas has for the same state)."""
        state = self.state(fold)
        return FoldCheck(entities=len(state), digest=state_digest(self.collection or self.name, state))

    async def check_running(self, log: EventLog) -> FoldCheck:
        """Entities and digest of the fold the service would build from ``log`` now."""
        return self.check(await self.running(log))
