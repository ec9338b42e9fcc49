"""The studio's state: one fold of its events (blobs with every version and delta, providers, runs, lineage).

Every replica builds it at start from the log and keeps it current by following the log
(``nexus.replay.LiveFold``), so a blob written on one replica is read on every other a moment
later. The fold never reads the log itself: ``apply`` takes one event, so ``nexus replay
--verify`` can feed it the log in order and compare (``nexus.services.studio.projections``).
Blob content is in Raw; the fold knows its reference, size and sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from nexus.proto import CloudEvent, type_of
from nexus.proto.events.studio import (
    BlobCreated,
    BlobDeleted,
    BlobOrigin,
    BlobUpdated,
    Delta,
    DeltaApplied,
    ProviderRegistered,
    ProviderRemoved,
    StudioRunRolledBack,
    StudioRunStarted,
)
from nexus.replay import EventFold

__all__ = [
    "PROVIDERS_STREAM",
    "STUDIO_TYPES",
    "Blob",
    "Provider",
    "Run",
    "StudioState",
    "Version",
    "blob_stream",
    "run_stream",
]

PROVIDERS_STREAM = "studio-providers"


def blob_stream(blob_id: str) -> str:
    """The log stream holding one blob's events (its version n is the stream's event n, deltas and all)."""
    return f"blob-{blob_id}"


def run_stream(execution_id: str) -> str:
    """The log stream recording what one provider run did (started, output applied, rolled back)."""
    return f"studio-run-{execution_id}"


BLOB_CREATED = type_of(BlobCreated)
BLOB_UPDATED = type_of(BlobUpdated)
BLOB_DELETED = type_of(BlobDeleted)
DELTA_APPLIED = type_of(DeltaApplied)
PROVIDER_REGISTERED = type_of(ProviderRegistered)
PROVIDER_REMOVED = type_of(ProviderRemoved)
RUN_STARTED = type_of(StudioRunStarted)
RUN_ROLLED_BACK = type_of(StudioRunRolledBack)

STUDIO_TYPES = (
    BLOB_CREATED,
    BLOB_UPDATED,
    BLOB_DELETED,
    DELTA_APPLIED,
    PROVIDER_REGISTERED,
    PROVIDER_REMOVED,
    RUN_STARTED,
    RUN_ROLLED_BACK,
)
"""The event types the fold reads."""


@dataclass
class Version:
    """One version of a blob."""

    version: int
    content_ref: str
    size: int
    sha256: str
    content_type: str
    metadata: dict[str, Any]
    at: str
    by: str
    deltas: list[Delta] = field(default_factory=list)
    """The deltas from the previous version (none for version 1)."""
    origin: BlobOrigin | None = None
    reason: str = "create"
    event_id: str = ""


@dataclass
class Blob:
    """A blob and its whole history."""

    blob_id: str
    owner: str
    created_by: str
    created_at: str
    parent_id: str | None = None
    origin: BlobOrigin | None = None
    versions: list[Version] = field(default_factory=list)
    deleted: bool = False
    deleted_at: str | None = None
    children: list[str] = field(default_factory=list)
    """Blobs whose ``parent_id`` is this one, in creation order."""
    stream_version: int = 0
    """The version of the blob's stream last folded (the expected version of the next write)."""

    @property
    def current(self) -> Version:
        """The latest version."""
        return self.versions[-1]

    @property
    def version(self) -> int:
        return len(self.versions)

    @property
    def updated_at(self) -> str:
        return self.deleted_at or self.current.at


@dataclass
class Provider:
    """A registered provider (seed 004's shape in ``document``)."""

    provider_id: str
    owner: str
    document: dict[str, Any]
    registered_at: str
    registered_by: str = ""


@dataclass
class Run:
    """A provider's workflow run for a blob."""

    execution_id: str
    blob_id: str
    blob_version: int
    provider_id: str
    workflow_id: str
    trigger: str
    priority: int
    started_at: str
    applied: bool = False
    applied_version: int | None = None
    created_blobs: list[str] = field(default_factory=list)
    rolled_back: bool = False
    requested_by: str = ""
    """The execution that asked for a ``manual`` run (its rollback undoes this run too)."""


class StudioState(EventFold):
    """Everything the studio knows, folded from its events in log order."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, Blob] = {}
        self.providers: dict[tuple[str, str], Provider] = {}
        """(owner, provider id) → the provider."""
        self.runs: dict[str, Run] = {}
        """execution id → the run."""
        self.started: dict[tuple[str, int, str, str], str] = {}
        """(blob id, blob version, provider id, workflow id) → the execution started for it."""
        self.runs_of_provider: dict[str, list[str]] = {}
        """provider id → the executions its runs started, in log order (what a provider triggered,
        read without a pass over every run; derived from ``runs``, so not in ``snapshot``)."""
        self.blobs_of_execution: dict[str, list[str]] = {}
        """execution id → the blobs it created: through the delta transformer (``origin``) or
        by a step calling ``POST /blobs`` with the run's delegated token (``created_by`` =
        ``execution:<id>``), in log order. Derived from ``blobs``, so not in ``snapshot``."""

    # -- blobs ----------------------------------------------------------------------------------

    def _blob_created(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, BlobCreated)
        if data.blob_id in self.blobs:
            return
        at = event.time or ""
        blob = Blob(
            blob_id=data.blob_id,
            owner=data.owner,
            created_by=data.created_by,
            created_at=at,
            parent_id=data.parent_id,
            origin=data.origin,
            stream_version=event.streamversion or 1,
        )
        blob.versions.append(
            Version(
                version=1,
                content_ref=data.content_ref,
                size=data.size,
                sha256=data.sha256,
                content_type=data.content_type,
                metadata=dict(data.metadata),
                at=at,
                by=data.created_by,
                origin=data.origin,
                event_id=event.id,
            )
        )
        self.blobs[data.blob_id] = blob
        # "execution:" is how the blob routes name a writer acting for a workflow step.
        maker = data.origin.execution_id if data.origin is not None else None
        if maker is None and data.created_by.startswith("execution:"):
            maker = data.created_by.removeprefix("execution:")
        if maker:
            self.blobs_of_execution.setdefault(maker, []).append(data.blob_id)
        parent = self.blobs.get(data.parent_id) if data.parent_id else None
        if parent is not None:
            parent.children.append(data.blob_id)

    def _blob_updated(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, BlobUpdated)
        blob = self.blobs.get(data.blob_id)
        if blob is None or data.version != blob.version + 1:
            return
        blob.versions.append(
            Version(
                version=data.version,
                content_ref=data.content_ref,
                size=data.size,
                sha256=data.sha256,
                content_type=data.content_type,
                metadata=dict(data.metadata),
                at=event.time or "",
                by=data.updated_by,
                deltas=list(data.deltas),
                origin=data.origin,
                reason=data.reason,
                event_id=event.id,
            )
        )
        blob.stream_version = max(blob.stream_version, event.streamversion or 0)

    def _blob_deleted(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, BlobDeleted)
        blob = self.blobs.get(data.blob_id)
        if blob is None or blob.deleted:
            return
        blob.deleted = True
        blob.deleted_at = event.time or ""
        blob.stream_version = max(blob.stream_version, event.streamversion or 0)

    # -- providers and runs -----------------------------------------------------------------------

    def _provider_registered(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, ProviderRegistered)
        provider = data.provider.get("provider")
        provider_id = str(provider.get("id")) if isinstance(provider, dict) and provider.get("id") else ""
        if not provider_id:
            return
        self.providers[(data.owner, provider_id)] = Provider(
            provider_id=provider_id,
            owner=data.owner,
            document=dict(data.provider),
            registered_at=event.time or "",
            registered_by=data.registered_by,
        )

    def _provider_removed(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, ProviderRemoved)
        self.providers.pop((data.owner, data.provider_id), None)

    def _run_started(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, StudioRunStarted)
        if data.execution_id in self.runs:
            return
        self.runs[data.execution_id] = Run(
            execution_id=data.execution_id,
            blob_id=data.blob_id,
            blob_version=data.blob_version,
            provider_id=data.provider_id,
            workflow_id=data.workflow_id,
            trigger=data.trigger,
            priority=data.priority,
            started_at=event.time or "",
            requested_by=data.requested_by,
        )
        self.started[(data.blob_id, data.blob_version, data.provider_id, data.workflow_id)] = data.execution_id
        self.runs_of_provider.setdefault(data.provider_id, []).append(data.execution_id)

    def _delta_applied(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, DeltaApplied)
        run = self.runs.get(data.execution_id)
        if run is None or run.applied:
            return
        run.applied = True
        run.applied_version = data.version
        run.created_blobs = list(data.created_blobs)

    def _run_rolled_back(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, StudioRunRolledBack)
        run = self.runs.get(data.execution_id)
        if run is not None:
            run.rolled_back = True

    # -- questions --------------------------------------------------------------------------------

    def tenant_of_blob(self, blob_id: str) -> str | None:
        """The client owning blob ``blob_id`` (deleted or not), or None when there is no such blob."""
        blob = self.blobs.get(blob_id)
        return blob.owner if blob is not None else None

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain documents, entity id → document (what replay compares)."""
        out: dict[str, Any] = {}
        for blob_id, blob in self.blobs.items():
            out[f"blob/{blob_id}"] = msgspec.to_builtins(blob, order="sorted")
        for (owner, provider_id), provider in self.providers.items():
            out[f"provider/{owner}/{provider_id}"] = msgspec.to_builtins(provider, order="sorted")
        for execution_id, run in self.runs.items():
            out[f"run/{execution_id}"] = msgspec.to_builtins(run, order="sorted")
        return out


StudioState.handlers = {
    BLOB_CREATED: StudioState._blob_created,
    BLOB_UPDATED: StudioState._blob_updated,
    BLOB_DELETED: StudioState._blob_deleted,
    DELTA_APPLIED: StudioState._delta_applied,
    PROVIDER_REGISTERED: StudioState._provider_registered,
    PROVIDER_REMOVED: StudioState._provider_removed,
    RUN_STARTED: StudioState._run_started,
    RUN_ROLLED_BACK: StudioState._run_rolled_back,
}
