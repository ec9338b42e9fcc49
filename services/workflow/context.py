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

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from nexus.proto import PLATFORM_TENANT

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
    """Workflow definitions and JSON schemas, versioned, in namespaces: the platform's and one per
    client (a client sees its own, then the platform's); every registration is an event in the log."""

    async def register_workflow(
        self,
        document: str | bytes | Mapping[str, Any],
        *,
        source: str = "api",
        only_if_changed: bool = False,
        tenant: str = PLATFORM_TENANT,
    ) -> WorkflowDefinition:
        """Validate and register a workflow (YAML or JSON text, or a mapping) in ``tenant``'s
        namespace; a new version each time.

        Raises:
            DefinitionError: with every problem by path (duplicate step id, malformed JSONPath or
                condition, unknown step in a JSONPath, unknown service, unknown schema id, a
                client naming a platform workflow, ...).
        """
        ...

    def get_workflow(
        self, workflow_id: str, version: int | None = None, *, tenant: str = PLATFORM_TENANT
    ) -> WorkflowDefinition | None:
        """The latest version (or the given one) of a workflow as ``tenant`` sees it, or None."""
        ...

    def workflow_tenant(self, workflow_id: str, tenant: str = PLATFORM_TENANT) -> str | None:
        """The namespace ``workflow_id`` resolves to for ``tenant`` (its own, else the platform's)."""
        ...

    def workflow_versions(self, workflow_id: str, *, tenant: str = PLATFORM_TENANT) -> list[WorkflowDefinition]:
        """Every version of ``workflow_id`` as ``tenant`` sees it."""
        ...

    def list_workflows(self, tenant: str | None = None) -> list[WorkflowDefinition]:
        """The latest version of every workflow ``tenant`` sees (None: every namespace), by id."""
        ...

    def workflow_entries(self, tenant: str | None = None) -> list[tuple[str, WorkflowDefinition]]:
        """(namespace, latest version) of every workflow ``tenant`` sees (None: every namespace)."""
        ...

    async def register_schema(
        self,
        document: str | bytes | Mapping[str, Any],
        *,
        source: str = "api",
        only_if_changed: bool = False,
        tenant: str = PLATFORM_TENANT,
    ) -> SchemaDefinition:
        """Validate and register a schema (seed 004 format: JSON Schema 2020-12 under ``definition``).

        Raises:
            DefinitionError: with every problem by path.
        """
        ...

    def get_schema(self, schema_id: str, *, tenant: str = PLATFORM_TENANT) -> SchemaDefinition | None:
        """The latest version of a schema as ``tenant`` sees it, or None."""
        ...

    def list_schemas(self, tenant: str | None = None) -> list[SchemaDefinition]:
        """The latest version of every schema ``tenant`` sees (None: every namespace), by id."""
        ...

    def schema_entries(self, tenant: str | None = None) -> list[tuple[str, SchemaDefinition]]:
        """(namespace, latest version) of every schema ``tenant`` sees (None: every namespace)."""
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
        tenant: str = PLATFORM_TENANT,
        max_retries: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Queue an execution of the latest version of ``workflow_id`` for ``tenant`` (its owner);
        return its id at once.

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

    async def tenant_of(self, execution_id: str) -> str | None:
        """The tenant that owns the execution, or None when there is no such execution."""
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
        self,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        tenant: str | None = None,
    ) -> builtins.list[ExecutionState]:
        """Executions, newest first, filtered by status, workflow and tenant (None: every tenant's)."""
        ...

    def queue_stats(self, tenant: str | None = None) -> dict[str, Any]:
        """The queue as ``tenant`` sees it (None: everything, with the replicas' own figures)."""
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
