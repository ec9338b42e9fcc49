"""KAM's state as a replay projection (``nexus replay --verify`` checks it).

The replay feeds the log's KAM events, in order, to the same ``KamState.apply`` the service
runs, and compares the result with the state KAM builds at start (``KamContext.load``).
Imported by ``nexus replay``, which registers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.replay import FoldProjection, register_projection
from nexus.services.kam.state import KAM_TYPES, KamState

__all__ = ["Kam"]


@register_projection
class Kam(FoldProjection):
    """Clients, users, sessions, templates, requests, deliverables and the cost ledger."""

    name = "kam.state"
    collection = "kam"
    reads = KAM_TYPES

    def new_fold(self) -> KamState:
        return KamState()

    def fold_event(self, fold: KamState, event: CloudEvent) -> None:
        fold.apply(event)

    def state(self, fold: KamState) -> Mapping[str, Any]:
        return fold.snapshot()

    async def running(self, log: EventLog) -> KamState:
        state = KamState()
        async for batch in log.iter_all(1, types=KAM_TYPES):
            for event in batch:
                state.apply(event)
        return state
