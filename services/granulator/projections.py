"""The granulator's handshakes as a replay projection (``nexus replay --verify`` checks them).

A replica decides from a handshake's state (``handlers.fold`` over its stream) whether it holds
capacity, may be processed, acknowledged or has expired; the projection folds every handshake
from the log in order and compares it with each stream read and folded as a replica does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.replay import FoldProjection, register_projection
from nexus.services.granulator import handlers

__all__ = ["Handshakes"]

_PREFIX = "granulation-"


@register_projection
class Handshakes(FoldProjection):
    """Every handshake's state (status, worker, tenant, outcome, validations, progress)."""

    name = "granulator.handshakes"
    collection = "handshakes"
    reads = handlers.EVENT_TYPES

    def new_fold(self) -> dict[str, list[CloudEvent]]:
        return {}

    def fold_event(self, fold: dict[str, list[CloudEvent]], event: CloudEvent) -> None:
        if event.streamid and event.streamid.startswith(_PREFIX):
            fold.setdefault(event.streamid, []).append(event)

    def state(self, fold: Mapping[str, Any]) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        for stream, value in fold.items():
            state = handlers.fold(value) if isinstance(value, list) else value
            if state is not None:
                out[stream.removeprefix(_PREFIX)] = state
        return out

    async def running(self, log: EventLog) -> dict[str, handlers.HandshakeState | None]:
        streams: set[str] = set()
        async for batch in log.iter_all(types=handlers.EVENT_TYPES):
            streams.update(e.streamid for e in batch if e.streamid and e.streamid.startswith(_PREFIX))
        # As a replica loads a handshake: its stream read and folded.
        return {stream: handlers.fold(await log.read_stream(stream)) for stream in sorted(streams)}
