"""Events of the workflow service's job API, presigned uploads, triggers and phases (seeds 000, 001)."""

from __future__ import annotations

from typing import Any

import msgspec

from nexus.proto._catalog import event_type


@event_type("nexus.workflow.job.initiated")
class JobInitiated(msgspec.Struct, frozen=True, kw_only=True):
    """A job was initiated (``POST /job/initiate``); it has no execution until it is executed."""

    job_id: str
    """The ``jobExecutionId`` handed to the client."""
    workflow_id: str
    """Workflow the job will run."""
    title: str = ""
    description: str = ""
    key_id: str = ""
    """Id of the API key that initiated it."""
    owner: str = ""
    """Owner of that key: only keys of the same owner may read or execute the job."""


@event_type("nexus.workflow.job.executed")
class JobExecuted(msgspec.Struct, frozen=True, kw_only=True):
    """A job's payload was accepted and its execution started (``POST /job/execute``)."""

    job_id: str
    workflow_id: str
    execution_id: str
    """Execution the engine started; the job's status and results are read from it."""
    input: dict[str, Any] = {}
    """The workflow input built from the ``jobPayloadSchemaInstance``."""


@event_type("nexus.workflow.upload.issued")
class UploadIssued(msgspec.Struct, frozen=True, kw_only=True):
    """A presigned upload URL was issued (``POST /job/file/upload``)."""

    upload_id: str
    file_extension: str
    max_bytes: int
    """Largest body the URL accepts."""
    expires_at: float
    """Unix time after which the URL is refused."""
    job_id: str = ""
    tenant: str = "platform"
    """The client that asked for the URL: the file is stored in its Raw namespace."""


@event_type("nexus.workflow.upload.completed")
class UploadCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """A presigned URL was used: the file is stored in Raw and the URL cannot be used again."""

    upload_id: str
    raw_ref: str
    """Where Raw keeps the file (``open_raw``-style reference)."""
    size: int
    sha256: str
    file_url: str
    """The URL a job payload passes for this file (``file`` and ``array_files`` fields)."""
    content_type: str = "application/octet-stream"


@event_type("nexus.workflow.trigger.registered")
class TriggerRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """A trigger binds an event type and a condition to a workflow start (registering again replaces it)."""

    trigger_id: str
    event_type: str
    """CloudEvents ``type`` that fires it; for external events also ``ext.<source>.<event>``."""
    workflow_id: str
    input_map: dict[str, Any] = {}
    """Workflow input field → JSONPath over the triggering event (``$.data.…``), or a literal."""
    condition: str = ""
    """Expression over JSONPath values of the event; empty means always."""
    priority: int = 50
    active: bool = True
    tenant: str = ""
    """The client that owns the trigger (``platform`` for bundled ones); trigger ids are unique per
    tenant. Empty in events recorded before tenancy: read as the platform's."""


@event_type("nexus.workflow.trigger.removed")
class TriggerRemoved(msgspec.Struct, frozen=True, kw_only=True):
    """A trigger was removed; events after this one no longer fire it."""

    trigger_id: str
    tenant: str = ""
    """The tenant whose trigger was removed (empty: the platform's, as before tenancy)."""


@event_type("nexus.workflow.trigger.fired")
class TriggerFired(msgspec.Struct, frozen=True, kw_only=True):
    """A trigger matched an event and started a workflow (once per triggering event)."""

    trigger_id: str
    event_id: str
    """Id of the triggering event, also the start's idempotency key."""
    workflow_id: str
    execution_id: str
    tenant: str = ""
    """The trigger's tenant (empty in events recorded before tenancy: the platform)."""
    depth: int = 1
    """Place of the started execution in its trigger chain: 1 when the triggering event did not
    come from an execution started by a trigger, else that execution's depth + 1."""


class TriggerLink(msgspec.Struct, frozen=True, kw_only=True):
    """One execution of a trigger chain and the trigger that started it."""

    execution_id: str
    trigger_id: str = ""
    """Empty for the chain's first execution when no trigger started it (an API call, a job)."""


@event_type("nexus.workflow.trigger.refused")
class TriggerRefused(msgspec.Struct, frozen=True, kw_only=True):
    """A trigger matched an event but did not start its workflow (once per triggering event)."""

    trigger_id: str
    event_id: str
    workflow_id: str
    reason: str
    """``depth``: the chain reached ``NEXUS_TRIGGER_MAX_DEPTH``; ``rate``: the trigger is over
    ``NEXUS_TRIGGER_RATE`` / ``NEXUS_TRIGGER_BURST``."""
    message: str
    tenant: str = ""
    depth: int = 0
    """The depth the start would have had."""
    chain: list[TriggerLink] = []
    """The executions of the chain, oldest first, each with the trigger that started it."""


@event_type("nexus.workflow.phase.triggered")
class PhaseTriggered(msgspec.Struct, frozen=True, kw_only=True):
    """A phase of the seven-phase pipeline was triggered (``POST /api/v1/workflow/phase/{n}``)."""

    phase: int
    user_id: str
    sync_id: str = ""
    metadata: dict[str, Any] = {}
    """Everything else the caller sent (seller id, matches, claim, payout…)."""
