"""Projections and replay: views rebuilt from the event log, deterministically.

::

    runner, result = await replay(log, Executions(), checkpoints=CheckpointStore(raw, "executions"))
    runner.atlas.collection("executions").query({"status": "RUNNING"})

The same ``Projection`` runs live (``follow``, or a consumer calling ``runner.apply``) and in
replay; ``Atlas.digest()`` of both agrees, which ``nexus replay --verify`` checks.
"""

from __future__ import annotations

from nexus.replay._fold import FoldCheck, FoldProjection, state_digest
from nexus.replay._keys import Keys
from nexus.replay._live import EventFold, FoldState, Follower, LiveFold
from nexus.replay._projection import (
    ALL_EVENTS,
    PROJECTIONS,
    Projection,
    ProjectionError,
    StreamCatalog,
    handles,
    load_projection,
    register_projection,
    registered,
)
from nexus.replay._runner import (
    Checkpoint,
    CheckpointStore,
    ProjectionRunner,
    ReplayProgress,
    ReplayResult,
    follow,
    replay,
)
from nexus.replay._tail import tail

__all__ = [
    "ALL_EVENTS",
    "PROJECTIONS",
    "Checkpoint",
    "CheckpointStore",
    "EventFold",
    "FoldCheck",
    "FoldProjection",
    "FoldState",
    "Follower",
    "Keys",
    "LiveFold",
    "Projection",
    "ProjectionError",
    "ProjectionRunner",
    "ReplayProgress",
    "ReplayResult",
    "StreamCatalog",
    "follow",
    "handles",
    "load_projection",
    "register_projection",
    "registered",
    "replay",
    "state_digest",
    "tail",
]
