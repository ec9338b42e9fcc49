"""Events produced by the studio service: versioned blobs, their deltas, providers and their runs (seed 004).

Streams: ``blob-<blob_id>`` (one blob's whole history: created, each update with its deltas,
deleted), ``studio-providers`` (providers registered and removed), ``studio-run-<execution_id>``
(what a provider's workflow run did to its blob: started for which blob version, its output
applied). Blob content lives in Raw, content-addressed by its sha256 under the owner's
namespace; events carry the reference, never the content. Events about a client's blob carry
the client as their ``tenant``, so ``nexus.evt.studio.blob.*`` reaches that client's subscribers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nexus.proto._catalog import event_type


class BlobOrigin(msgspec.Struct, frozen=True, kw_only=True):
    """What made a blob or a version, when a provider's workflow did (its lineage)."""

    provider_id: str
    workflow_id: str
    execution_id: str
    step: str = ""
    """The step of the run, or the output field (``created_blobs``, ``transformed_content``...)."""


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """One change from a version to the next.

    ``kind``: ``json-patch`` (``operations`` is an RFC 6902 patch of the JSON content),
    ``text-diff`` (``operations`` is a list of line hunks ``{"at", "delete", "insert"}``), or
    ``replace`` (``operations`` is ``[{"content_ref", "size", "sha256"}]``: the new content whole).
    """

    kind: str
    operations: list[Any]


@event_type("nexus.studio.blob.created")
class BlobCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A blob was created: version 1."""

    blob_id: str
    owner: str
    """The client (tenant) that owns it."""
    created_by: str
    content_type: str
    content_ref: str
    """``raw://t/<owner>/studio/sha256/<hex>``: the content, stored once per owner."""
    size: int
    sha256: str
    metadata: dict[str, Any] = {}
    parent_id: str | None = None
    origin: BlobOrigin | None = None


@event_type("nexus.studio.blob.updated")
class BlobUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """A new version of a blob, with the deltas from the previous one."""

    blob_id: str
    version: int
    """The version this event makes (2, 3, ...)."""
    updated_by: str
    content_type: str
    content_ref: str
    size: int
    sha256: str
    metadata: dict[str, Any] = {}
    deltas: list[Delta] = []
    origin: BlobOrigin | None = None
    reason: str = "update"
    """``update`` (PUT), ``patch`` (PATCH), ``delta`` (a workflow's output), ``rollback``."""


@event_type("nexus.studio.blob.deleted")
class BlobDeleted(msgspec.Struct, frozen=True, kw_only=True):
    """A blob was deleted (a tombstone): its versions stay readable to its owner."""

    blob_id: str
    deleted_by: str
    origin: BlobOrigin | None = None


@event_type("nexus.studio.delta.applied")
class DeltaApplied(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow's output was turned into deltas and applied (seed 004's delta transformer)."""

    blob_id: str
    execution_id: str
    provider_id: str
    workflow_id: str
    version: int | None = None
    """The blob version the deltas made (None when the output changed nothing of the blob)."""
    created_blobs: list[str] = []
    """Blobs derived from this one by the run (``create_derived``)."""
    operations: int = 0
    """How many operations the output held."""
    error: str = ""
    """Why the output changed nothing although it asked to (operations that do not apply, the
    blob deleted meanwhile); empty when it applied."""


@event_type("nexus.studio.provider.registered")
class ProviderRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """A provider was registered (or registered again, replacing the previous one)."""

    provider: dict[str, Any]
    """The provider in seed 004's shape: ``provider: {id, name, type}``, ``workflows: [...]``."""
    owner: str
    """The tenant whose blobs it reacts to (``platform``: every tenant's)."""
    registered_by: str = ""


@event_type("nexus.studio.provider.removed")
class ProviderRemoved(msgspec.Struct, frozen=True, kw_only=True):
    """A provider was removed: its triggers no longer fire."""

    provider_id: str
    owner: str


@event_type("nexus.studio.run.started")
class StudioRunStarted(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's workflow was started for a blob event (once per blob version, provider, workflow)."""

    execution_id: str
    blob_id: str
    blob_version: int
    provider_id: str
    workflow_id: str
    trigger: str
    """``onCreate``, ``onUpdate``, ``onDelete`` or ``manual`` (``POST /providers/trigger``)."""
    priority: int = 50
    requested_by: str = ""
    """For a ``manual`` start: the execution whose step asked for it (``POST /providers/trigger``
    with a delegated token), so rolling that execution back undoes this run too."""


@event_type("nexus.studio.run.rolled_back")
class StudioRunRolledBack(msgspec.Struct, frozen=True, kw_only=True):
    """What a run did was undone (``POST /providers/rollback``, a workflow's compensation)."""

    execution_id: str
    blob_id: str
    restored_version: int | None = None
    deleted_blobs: list[str] = []
