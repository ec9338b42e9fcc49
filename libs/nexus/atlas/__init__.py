"""Atlas: the in-memory view store that projections fold the event log into.

::

    atlas = Atlas()
    runs = atlas.collection("executions")
    runs.create_index("status")
    runs.insert("exec-1", {"status": "RUNNING", "cost": {"total": 3}})
    page = runs.query({"status": {"eq": "RUNNING"}}, sort="-cost.total", limit=10)

See ``nexus.atlas._filter`` for the filter language.
"""

from __future__ import annotations

from nexus.atlas._errors import (
    AtlasError,
    AtlasFilterError,
    AtlasSnapshotError,
    AtlasViewExistsError,
    AtlasViewNotFoundError,
)
from nexus.atlas._filter import Filter, all_of, any_of, parse_filter, where
from nexus.atlas._store import (
    DEFAULT_COLLECTION,
    Atlas,
    AtlasChange,
    AtlasStore,
    AtlasView,
    QueryResult,
    Subscription,
)

# The hooks the Atlas takes, re-exported for its callers; they are declared in nexus.hooks.
from nexus.hooks import (
    Clock,
    FixedClock,
    Metrics,
    NoopMetrics,
    NoopTracer,
    RecordingMetrics,
    RecordingTracer,
    SystemClock,
    Tracer,
)

__all__ = [
    "DEFAULT_COLLECTION",
    "Atlas",
    "AtlasChange",
    "AtlasError",
    "AtlasFilterError",
    "AtlasSnapshotError",
    "AtlasStore",
    "AtlasView",
    "AtlasViewExistsError",
    "AtlasViewNotFoundError",
    "Clock",
    "Filter",
    "FixedClock",
    "Metrics",
    "NoopMetrics",
    "NoopTracer",
    "QueryResult",
    "RecordingMetrics",
    "RecordingTracer",
    "Subscription",
    "SystemClock",
    "Tracer",
    "all_of",
    "any_of",
    "parse_filter",
    "where",
]
