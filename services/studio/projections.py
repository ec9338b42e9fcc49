"""The studio's state as a replay projection (``nexus replay --verify`` checks it).

The replay feeds the log's studio events, in order, to the same ``StudioState.apply`` the
service runs, and compares the result (blobs with every version and delta, providers, runs,
lineage) with the state the studio builds at start. Imported by ``nexus replay``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.replay import FoldProjection, register_projection
from nexus.services.studio.state import STUDIO_TYPES, StudioState

__all__ = ["Studio"]


@register_projection
class Studio(FoldProjection):
    """Blobs, their versions and deltas, providers, runs and lineage."""

    name = "studio.state"
    collection = "studio"
    reads = STUDIO_TYPES

    def new_fold(self) -> StudioState:
        return StudioState()

    def fold_event(self, fold: StudioState, event: CloudEvent) -> None:
        fold.apply(event)

    def state(self, fold: StudioState) -> Mapping[str, Any]:
        return fold.snapshot()

    async def running(self, log: EventLog) -> StudioState:
        state = StudioState()
        async for batch in log.iter_all(1, types=STUDIO_TYPES):
            for event in batch:
                state.apply(event)
        return state
