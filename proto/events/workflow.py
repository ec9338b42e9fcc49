"""Events produced by the workflow service: definitions, schemas and the transitions of executions.

Every transition of an execution is one of these events in stream ``execution-<id>``; the
execution's state is a fold of them (``nexus.services.workflow.handlers``). Due times (back-off,
waits, deadlines) are stored as RFC 3339 instants so they survive a restart of the service.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nexus.proto._catalog import event_type

# --- definitions ------------------------------------------------------------------------------


@event_type("nexus.workflow.definition.registered")
class WorkflowRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """A version of a workflow definition was registered (stream ``workflow-<id>``)."""

    workflow_id: str
    version: int
    """1-based; the stream version of this registration."""
    document: dict[str, Any]
    """The definition as registered (seed 004's YAML format, as JSON)."""
    source: str = "api"
    """Where it came from: ``api``, ``command``, ``bundled:<file>``."""
    tenant: str = "platform"
    """The namespace the workflow lives in: the registering client's, or the platform's."""


@event_type("nexus.workflow.schema.registered")
class SchemaRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """A version of a JSON schema was registered (stream ``schema-<id>``)."""

    schema_id: str
    version: int
    document: dict[str, Any]
    """The schema as registered (seed 004's format; JSON Schema 2020-12 under ``definition``)."""
    source: str = "api"
    tenant: str = "platform"
    """The namespace the schema lives in: the registering client's, or the platform's."""


# --- executions -------------------------------------------------------------------------------


@event_type("nexus.workflow.execution.queued")
class ExecutionQueued(msgspec.Struct, frozen=True, kw_only=True):
    """An execution was accepted, its input valid; it waits in the queue for a replica."""

    execution_id: str
    workflow_id: str
    workflow_version: int
    """The version it runs to the end, whatever is registered later."""
    input: Any
    priority: int = 50
    """0-100; higher starts first."""
    idempotency_key: str | None = None
    provider_id: str = ""
    trigger: dict[str, Any] | None = None
    """What started it (a trigger, a job, a phase), when not a plain API call."""
    tenant: str = "platform"
    """The client that owns the execution (who started it, or the trigger's owner)."""
    workflow_tenant: str = "platform"
    """The namespace of the definition it runs (the owner's own, or the platform's)."""
    max_retries: int | None = None
    """Times the execution may be dispatched again after its driver stopped without finishing it
    (a replica died or restarted, or the driver failed); past it the execution fails. None: no limit.
    Seed 004's ``QueuedExecution.max_retries``; the start's value, else the workflow's."""
    metadata: dict[str, Any] | None = None
    """The caller's own fields for the execution (seed 004's ``QueuedExecution.metadata``),
    shown with it and readable as ``$.execution.metadata`` in its mappings."""


@event_type("nexus.workflow.execution.claimed")
class ExecutionClaimed(msgspec.Struct, frozen=True, kw_only=True):
    """A replica took the execution over; only its owner appends transitions from here on.

    The first claim starts the execution (QUEUED → RUNNING); later ones are take-overs after the
    owner died or restarted.
    """

    execution_id: str
    owner: str
    """Replica id."""
    incarnation: str
    """Random id of the replica's process, so a restarted replica is told from its old self."""
    deadline: str | None = None
    """When the execution times out (RFC 3339), from the workflow's ``timeout_seconds``."""
    previous_owner: str | None = None


@event_type("nexus.workflow.step.started")
class StepStarted(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt of a step (or of a compensation) begins; its request is about to be sent.

    A started attempt without a result after a crash is an attempt whose outcome is unknown:
    it is sent again with the same idempotency key.
    """

    execution_id: str
    step_id: str
    attempt: int
    idempotency_key: str
    compensation: bool = False
    request: Any = None
    """The mapped input sent to the step."""
    wait_until: str | None = None
    """``wait_event``: when the wait times out (RFC 3339)."""
    after_position: int | None = None
    """``wait_event``: only events after this log position can match."""


@event_type("nexus.workflow.step.completed")
class StepCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """A step (or a compensation) succeeded; ``output`` is what ``$.steps.<id>.output`` reads."""

    execution_id: str
    step_id: str
    attempt: int
    output: Any = None
    duration_ms: float = 0.0
    compensation: bool = False


@event_type("nexus.workflow.step.skipped")
class StepSkipped(msgspec.Struct, frozen=True, kw_only=True):
    """A step's condition was false; it did not run."""

    execution_id: str
    step_id: str
    reason: str = ""


@event_type("nexus.workflow.step.retrying")
class StepRetrying(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt failed with a retryable error; the next attempt is due at ``retry_at``."""

    execution_id: str
    step_id: str
    attempt: int
    """The attempt that failed."""
    error: str
    retry_at: str
    """RFC 3339; the back-off survives a restart."""
    compensation: bool = False


@event_type("nexus.workflow.step.failed")
class StepFailed(msgspec.Struct, frozen=True, kw_only=True):
    """A step (or a compensation) failed for good: attempts spent, or an error not worth retrying."""

    execution_id: str
    step_id: str
    attempt: int
    error: str
    on_failure: str = "fail"
    """``fail`` stops the execution (compensating); ``continue`` goes on to the next step."""
    compensation: bool = False


@event_type("nexus.workflow.execution.compensating")
class ExecutionCompensating(msgspec.Struct, frozen=True, kw_only=True):
    """The execution stopped; the compensations of its completed steps run in reverse order."""

    execution_id: str
    reason: str
    """``failed``, ``cancelled`` or ``timed_out``: the final status once compensated."""
    error: str = ""
    steps: list[str] = []
    """The steps to compensate, in the order they will run."""


@event_type("nexus.workflow.execution.cancel_requested")
class ExecutionCancelRequested(msgspec.Struct, frozen=True, kw_only=True):
    """Someone asked to cancel the execution; its owner stops it at the next transition."""

    execution_id: str
    reason: str = "cancelled"


@event_type("nexus.workflow.execution.completed")
class ExecutionCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """An execution reached COMPLETED; ``output`` is its validated output."""

    execution_id: str
    workflow_id: str
    output: Any = None


@event_type("nexus.workflow.execution.failed")
class ExecutionFailed(msgspec.Struct, frozen=True, kw_only=True):
    """An execution reached FAILED (a step failed and nothing could be compensated, or a compensation failed)."""

    execution_id: str
    workflow_id: str
    error: str
    step_id: str | None = None


@event_type("nexus.workflow.execution.compensated")
class ExecutionCompensated(msgspec.Struct, frozen=True, kw_only=True):
    """A failed execution's completed steps were all compensated (COMPENSATED)."""

    execution_id: str
    workflow_id: str
    error: str
    step_id: str | None = None


@event_type("nexus.workflow.execution.cancelled")
class ExecutionCancelled(msgspec.Struct, frozen=True, kw_only=True):
    """An execution reached CANCELLED."""

    execution_id: str
    workflow_id: str
    reason: str = "cancelled"


@event_type("nexus.workflow.execution.timed_out")
class ExecutionTimedOut(msgspec.Struct, frozen=True, kw_only=True):
    """An execution passed its deadline (TIMED_OUT)."""

    execution_id: str
    workflow_id: str
    deadline: str


# --- replicas ---------------------------------------------------------------------------------


@event_type("nexus.workflow.replica.heartbeat")
class ReplicaHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A replica of the workflow service is alive (stream ``workflow-replica-<id>``).

    Executions whose owner has not beaten for the lease time are taken over by another replica.
    """

    replica_id: str
    incarnation: str
    lease_seconds: float
    running: int = 0


@event_type("nexus.workflow.task.completed")
class TaskCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """A worker finished a ``task`` step's command; the engine matches it by ``idempotency_key``."""

    idempotency_key: str
    output: Any = None


@event_type("nexus.workflow.task.failed")
class TaskFailed(msgspec.Struct, frozen=True, kw_only=True):
    """A worker could not do a ``task`` step's command; ``retryable`` says whether to try again."""

    idempotency_key: str
    error: str
    retryable: bool = False
