"""Step types of the workflow engine, one module per kind, registered by that kind.

``api_call`` (``api_call.py``) calls a service over HTTP, ``task`` (``task.py``) sends a command
to a worker and waits for its result event, ``wait_event`` (``wait_event.py``) waits for an
event of the log. The driver (``driver.py``) looks the runner up with ``step_type(kind)``; a
new kind is one module with a class decorated by ``register`` (and its name added to
``definitions.StepKind``, which the definitions are validated against).
"""

from __future__ import annotations

from nexus.services.workflow.steps import api_call, task, wait_event
from nexus.services.workflow.steps._base import (
    Outcome,
    StepInput,
    StepRuntime,
    StepType,
    register,
    registered_kinds,
    step_type,
)
from nexus.services.workflow.steps._http import (
    EXECUTION_HEADER,
    TENANT_HEADER,
    call_http,
    fill_endpoint,
    task_headers,
    traceparent_for,
)

__all__ = [
    "EXECUTION_HEADER",
    "TENANT_HEADER",
    "Outcome",
    "StepInput",
    "StepRuntime",
    "StepType",
    "api_call",
    "call_http",
    "fill_endpoint",
    "register",
    "registered_kinds",
    "step_type",
    "task",
    "task_headers",
    "traceparent_for",
    "wait_event",
]
