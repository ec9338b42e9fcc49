"""Events produced by the workflow service."""

from __future__ import annotations

from typing import Any

import msgspec

from nexus.proto._catalog import event_type


@event_type("nexus.workflow.execution.completed")
class ExecutionCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """An execution reached COMPLETED; ``output`` is its validated output."""

    execution_id: str
    workflow_id: str
    output: Any = None
