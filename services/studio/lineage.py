"""Lineage: where a blob comes from and what was derived from it (``GET /blobs/{blob_id}/lineage``).

Read from the fold: a blob's ``parent_id`` is its edge up, ``children`` its edges down, and
each edge says what made it from the blob's ``BlobOrigin`` (provider, workflow, execution id
and step) when a provider's run did (``created_blobs`` of the delta transformer, or a step of
the run creating the blob with the run's delegated token: step ``api``). The versions of each blob a run
wrote (``delta``, ``rollback``) are listed with their origin too, so the answer shows every
change a provider made along the tree.

The answer is bounded: at most ``MAX_ANCESTORS`` parents up (a cycle cannot be written, as a
parent must exist before its child, but the walk would stop on one all the same) and at most
``MAX_NODES`` blobs in the tree (``truncated`` says when more were left out).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.proto.events.studio import BlobOrigin
from nexus.runtime import Owned, json_response
from nexus.services.studio.context import StudioContext
from nexus.services.studio.state import Blob, StudioState
from nexus.services.studio.triggers import effective_origin

__all__ = ["MAX_ANCESTORS", "MAX_NODES", "Edge", "Lineage", "LineageNode", "install", "lineage"]

MAX_ANCESTORS = 64
MAX_NODES = 1000


class Edge(msgspec.Struct, frozen=True, kw_only=True):
    """What made a blob from its parent, or a version of a blob: the provider's run, or a client's write."""

    provider_id: str | None = None
    workflow_id: str | None = None
    execution_id: str | None = None
    step: str | None = None

    @staticmethod
    def of(origin: BlobOrigin | None) -> Edge:
        if origin is None:
            return Edge()
        return Edge(
            provider_id=origin.provider_id,
            workflow_id=origin.workflow_id,
            execution_id=origin.execution_id,
            step=origin.step or None,
        )


class RunVersion(msgspec.Struct, frozen=True, kw_only=True):
    """A version of a blob that a provider's run wrote."""

    version: int
    reason: str
    edge: Edge


class LineageNode(msgspec.Struct, frozen=True, kw_only=True):
    """One blob of the tree, the edge from its parent, and its children."""

    blob_id: str
    parent_id: str | None
    version: int
    content_type: str
    metadata: dict[str, Any]
    deleted: bool
    created_at: str
    edge: Edge | None
    """From the parent to this blob (None for the root)."""
    versions_by_runs: list[RunVersion]
    children: list[LineageNode]


class Lineage(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /blobs/{blob_id}/lineage``: the blob's ancestors (root first) and the tree from the root."""

    blob_id: str
    ancestors: list[str]
    """The blob's parents, root first (empty when the blob is a root)."""
    root: LineageNode
    truncated: bool = False


def _node(state: StudioState, blob: Blob, owner: str, budget: list[int]) -> LineageNode:
    budget[0] -= 1
    children = []
    for child_id in blob.children:
        child = state.blobs.get(child_id)
        if child is None or child.owner != owner:
            continue
        if budget[0] <= 0:
            budget[1] = 1
            break
        children.append(_node(state, child, owner, budget))
    return LineageNode(
        blob_id=blob.blob_id,
        parent_id=blob.parent_id,
        version=blob.version,
        content_type=blob.current.content_type,
        metadata=blob.current.metadata,
        deleted=blob.deleted,
        created_at=blob.created_at,
        edge=Edge.of(effective_origin(state, blob.origin, blob.created_by)) if blob.parent_id else None,
        versions_by_runs=[
            RunVersion(version=v.version, reason=v.reason, edge=Edge.of(origin))
            for v in blob.versions[1:]
            if (origin := effective_origin(state, v.origin, v.by)) is not None
        ],
        children=children,
    )


def lineage(state: StudioState, blob: Blob) -> Lineage:
    """The lineage of ``blob`` (its owner's blobs only)."""
    ancestors: list[str] = []
    root = blob
    seen = {blob.blob_id}
    while root.parent_id and len(ancestors) < MAX_ANCESTORS:
        parent = state.blobs.get(root.parent_id)
        if parent is None or parent.owner != blob.owner or parent.blob_id in seen:
            break
        seen.add(parent.blob_id)
        ancestors.insert(0, parent.blob_id)
        root = parent
    budget = [MAX_NODES, 0]
    tree = _node(state, root, blob.owner, budget)
    return Lineage(blob_id=blob.blob_id, ancestors=ancestors, root=tree, truncated=bool(budget[1]))


def install(ctx: StudioContext) -> None:
    """Add ``GET /blobs/{blob_id}/lineage``."""

    @ctx.service.route(
        "GET",
        "/blobs/{blob_id}/lineage",
        summary="The tree of a blob's parents and derived blobs, each edge with provider, workflow, execution and step",
        response=Lineage,
        responses={404: "No such blob of the caller's"},
        tags=["blobs"],
        auth="client",
        owned=Owned("blob", "blob_id", ctx.state.tenant_of_blob),
    )
    async def get_lineage(request: web.Request) -> web.Response:
        _: KeyInfo = request[AUTH]
        blob = ctx.state.blobs[request.match_info["blob_id"]]
        return json_response(lineage(ctx.state, blob))
