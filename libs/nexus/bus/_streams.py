"""The streams Nexus requires (ARCHITECTURE.md, "Subjects"), as every adapter creates them."""

from __future__ import annotations

import msgspec

from nexus.proto import STREAM_CMD, STREAM_DLQ, STREAM_EVT, STREAM_EXT

DUPLICATE_WINDOW_SECONDS = 120.0
"""De-duplication window of every Nexus stream: a re-published event id within it is stored once."""


class StreamSpec(msgspec.Struct, frozen=True):
    """The settings Nexus requires of one of its streams."""

    name: str
    subjects: tuple[str, ...]
    retention: str = "limits"
    """``limits`` (kept until limits say otherwise) or ``workqueue`` (dropped once acknowledged)."""
    storage: str = "file"
    duplicate_window: float = DUPLICATE_WINDOW_SECONDS


NEXUS_STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(STREAM_EVT, ("nexus.evt.>",)),
    StreamSpec(STREAM_CMD, ("nexus.cmd.>",), retention="workqueue"),
    StreamSpec(STREAM_EXT, ("nexus.ext.>",)),
    StreamSpec(STREAM_DLQ, ("nexus.dlq.>",)),
)
"""The streams of ARCHITECTURE.md, "Subjects"."""
