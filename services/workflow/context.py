"""What the workflow service's modules share: the ``WorkflowContext`` and the engine's public interface.

The service's composition root (``bootstrap.py``) builds one ``WorkflowContext``; ``api.py`` builds
the aiohttp application and then calls ``install(app, ctx)`` of each optional module
(``jobapi``, ``uploads``, ``triggers``, ``phases``, ``live``) that exists, in that order. A module's
``install`` adds its routes and background work (``app.on_startup`` / ``app.on_cleanup`` /
``app.cleanup_ctx``) and must not block.

The interfaces below are what those modules may rely on. ``Engine`` and ``Registry`` are
Protocols so that a reader sees the whole contract in one place; the implementations are
``engine.WorkflowEngine`` and ``registry.WorkflowRegistry``.

Execution lifecycle (``ExecutionState.status``)::

    QUEUED ─► RUNNING ─► COMPLETED
                 │  └──► COMPENSATING ─► COMPENSATED | FAILED | CANCELLED | TIMED_OUT
                 └─────► FAILED | CANCELLED | TIMED_OUT

Final states: COMPLETED, FAILED, COMPENSATED, CANCELLED, TIMED_OUT (``FINAL_STATUSES``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    import logging

    from nexus.bus import Bus
    from nexus.eventlog import EventLog
    from nexus.proto import CloudEvent
    from nexus.services.workflow.definitions import SchemaDefinition, WorkflowDefinition
    from nexus.services.workflow.handlers import ExecutionState
    from nexus.services.workflow.settings import WorkflowSettings

__all__ = ["CTX_KEY", "FINAL_STATUSES", "STATUSES", "Engine", "Registry", "TransitionCallback", "WorkflowContext"]

STATUSES = ("QUEUED", "RUNNING", "COMPENSATING", "COMPLETED", "FAILED", "COMPENSATED", "CANCELLED", "TIMED_OUT")
"""Every status an execution can have."""
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "COMPENSATED", "CANCELLED", "TIMED_OUT"})
"""The statuses an execution never leaves."""

TransitionCallback = Callable[["ExecutionState", "CloudEvent"], "Awaitable[None] | None"]
"""Called after each transition with the new state and the event that made it (sync or async)."""


class Registry(Protocol):
    """Workflow definitions and JSON schemas, versioned; every registration is an event in the log."""

    async def register_workflow(
        self, document: str | bytes | Mapping[str, Any], *, source: str = "api"
    ) -> WorkflowDefinition:
        """Validate and register a workflow (YAML or JSON text, or a mapping); a new version each time.

        Raises:
            DefinitionError: with every problem by path (duplicate step id, malformed JSONPath or
                condition, unknown step in a JSONPath, unknown service, unknown schema id, ...).
        """
        ...

    def get_workflow(self, workflow_id: str, version: int | None = None) -> WorkflowDefinition | None:
        """The latest version (or the given one) of a workflow, or None."""
        ...

    def list_workflows(self) -> list[WorkflowDefinition]:
        """The latest version of every registered workflow, by id."""
        ...

    async def register_schema(
        self, document: str | bytes | Mapping[str, Any], *, source: str = "api"
    ) -> SchemaDefinition:
        """Validate and register a schema (seed 004 format: JSON Schema 2020-12 under ``definition``).

        Raises:
            DefinitionError: with every problem by path.
        """
        ...

    def get_schema(self, schema_id: str) -> SchemaDefinition | None:
        """The latest version of a schema, or None."""
        ...

    def list_schemas(self) -> list[SchemaDefinition]:
        """The latest version of every registered schema, by id."""
        ...


class Engine(Protocol):
    """Starts, drives, cancels and reports on executions."""

    async def start(
        self,
        workflow_id: str,
        input: Any,
        *,
        priority: int = 50,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        trigger: Mapping[str, Any] | None = None,
    ) -> str:
        """Queue an execution of the latest version of ``workflow_id``; return its id at once.

        The execution is durable when this returns (a ``queued`` event in stream
        ``execution-<id>``); a replica starts it when capacity allows, higher ``priority``
        (0-100) first. The same ``idempotency_key`` for the same workflow returns the same
        execution id and queues nothing new.

        Raises:
            InputValidationError: ``input`` fails the input schema; ``problems`` lists (path, message).
            UnknownWorkflowError / InactiveWorkflowError: nothing to start.
            ValueError: ``priority`` outside 0-100.
        """
        ...

    def get(self, execution_id: str) -> ExecutionState | None:
        """The current state (status, current step, step outputs, output, error, timings), or None."""
        ...

    async def load(self, execution_id: str) -> ExecutionState | None:
        """Like ``get`` but read from the log (authoritative, also right after another replica wrote)."""
        ...

    async def history(self, execution_id: str) -> list[CloudEvent]:
        """Every event of the execution, in order (empty when it does not exist)."""
        ...

    async def cancel(self, execution_id: str, reason: str = "cancelled") -> ExecutionState:
        """Request cancellation; compensations of completed steps run, the final status is CANCELLED.

        Cancelling a final execution changes nothing and returns its state.

        Raises:
            UnknownExecutionError: no such execution.
        """
        ...

    def list(
        self, status: str | None = None, workflow_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[ExecutionState]:
        """Executions, newest first, filtered by status and workflow."""
        ...

    def watch(self, execution_id: str) -> AsyncIterator[ExecutionState]:
        """The current state, then each new state until (and including) a final one."""
        ...

    def on_transition(self, callback: TransitionCallback) -> Callable[[], None]:
        """Call ``callback(state, event)`` after every transition of every execution this replica sees.

        Returns a function that removes the callback.
        """
        ...


@dataclass
class WorkflowContext:
    """Everything a workflow service module needs; built once by ``bootstrap``."""

    settings: WorkflowSettings
    """The service's settings (``settings.py``)."""
    log: EventLog
    """The event log: the record of every registration and transition."""
    bus: Bus | None
    """The bus (commands on ``nexus.cmd.*``, events on ``nexus.evt.*``); None in tests without NATS."""
    raw: Any
    """Blob storage (``nexus.raw``) for uploaded files; None until configured."""
    engine: Engine
    """Starts and reports on executions."""
    registry: Registry
    """Workflow and schema definitions."""
    views: Any = None
    """Read models over the log (the executions view; Atlas collections when available)."""
    logger: logging.Logger | None = None
    """The service's structured logger."""


CTX_KEY: web.AppKey[WorkflowContext] = web.AppKey("nexus_workflow_ctx", WorkflowContext)
"""``request.app[CTX_KEY]`` is the service's WorkflowContext."""
