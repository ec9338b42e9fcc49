"""KAM's execution of requests, deliverables, costs and notifications (seed 002, phases 4 and 8).

``install`` adds the routes of ``execution`` (execute, and the watcher that learns from the log
how executions end), ``worker_sessions`` (an external orchestrator's completion), ``costs`` (the
ledger report), ``notifications`` (the live stream) and, here, the deliverables: their listing
per request and their content, streamed from Raw to their owner (another client gets 404).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from nexus.raw import RawError, RawKeyError, RawNotFoundError, key_tenant, ref_key
from nexus.runtime import HTTPError, Owned, json_response
from nexus.services.kam import costs, execution, notifications, worker_sessions
from nexus.services.kam.context import KamContext
from nexus.services.kam.state import Deliverable

__all__ = ["CHUNK_BYTES", "KAM_CONTEXT", "DeliverableList", "DeliverableView", "install"]

KAM_CONTEXT: web.AppKey[KamContext] = web.AppKey("nexus_kam_context", KamContext)
"""``service.app[KAM_CONTEXT]``: KAM's context (its state, for tests and tools in the process)."""

CHUNK_BYTES = 64 * 1024
"""A deliverable's content is written in chunks of this size (chunked transfer encoding)."""


class DeliverableView(msgspec.Struct, frozen=True, kw_only=True):
    """A deliverable as its owner sees it (the content is at ``GET /api/deliverables/{id}``)."""

    id: str
    deliverable_id: str
    request_id: str
    client_id: str
    execution_id: str
    type: str
    storage_ref: str
    size_bytes: int
    content_type: str
    metadata: dict[str, Any]
    created_at: str


class DeliverableList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/requests/{id}/deliverables``."""

    request_id: str
    deliverables: list[DeliverableView]


def view(item: Deliverable) -> DeliverableView:
    """The answer's form of a deliverable."""
    return DeliverableView(
        id=item.deliverable_id,
        deliverable_id=item.deliverable_id,
        request_id=item.request_id,
        client_id=item.client_id,
        execution_id=item.execution_id,
        type=item.type,
        storage_ref=item.storage_ref,
        size_bytes=item.size_bytes,
        content_type=item.content_type,
        metadata=dict(item.metadata),
        created_at=item.created_at,
    )


class DeliverableRoutes:
    """The deliverables' handlers."""

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx

    async def listing(self, request: web.Request) -> web.Response:
        """The deliverables recorded for a request, in the order they were recorded."""
        request_id = request.match_info["request_id"]
        state = self.ctx.state
        item = state.requests[request_id]
        listed = [view(state.deliverables[d]) for d in item.deliverable_ids if d in state.deliverables]
        return json_response(DeliverableList(request_id=request_id, deliverables=listed))

    async def content(self, request: web.Request) -> web.StreamResponse:
        """The deliverable's content from Raw, with its content type, in chunks. It is sent as an
        attachment that the browser may not sniff or run (a workflow's output is not KAM's page)."""
        deliverable_id = request.match_info["deliverable_id"]
        item = self.ctx.state.deliverables[deliverable_id]
        try:
            key = ref_key(item.storage_ref, tenant=item.client_id)
            if key_tenant(key) != item.client_id:
                raise RawKeyError(f"{item.storage_ref} is outside the client's namespace")
            data = await self.ctx.service.raw.retrieve(key)
        except RawNotFoundError:
            raise HTTPError(404, f"deliverable {deliverable_id!r}: its content is no longer stored") from None
        except RawKeyError as exc:
            raise HTTPError(404, f"deliverable {deliverable_id!r} has no content KAM can serve ({exc})") from None
        except RawError as exc:
            raise HTTPError(503, f"Raw cannot be read now ({exc})") from None
        name = re.sub(r"[^A-Za-z0-9._-]", "_", key.rsplit("/", 1)[-1]) or "deliverable"
        response = web.StreamResponse(
            headers={
                "Content-Type": item.content_type,
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox",
                "Cache-Control": "private, no-store",
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        view_ = memoryview(data)
        for start in range(0, len(data), CHUNK_BYTES):
            await response.write(view_[start : start + CHUNK_BYTES].tobytes())
        await response.write_eof()
        return response


def install(ctx: KamContext) -> None:
    """Add execution, deliverables, costs and notifications to KAM."""
    ctx.service.app[KAM_CONTEXT] = ctx
    execution.install(ctx)
    worker_sessions.install(ctx)
    costs.install(ctx)
    notifications.install(ctx)
    routes = DeliverableRoutes(ctx)
    ctx.route(
        "GET",
        "/requests/{request_id}/deliverables",
        summary="The deliverables of a request",
        response=DeliverableList,
        responses={404: "No such request"},
        tags=["deliverables"],
        auth="client",
        owned=Owned("request", "request_id", ctx.state.tenant_of_request),
        scope="deliverables:read",
    )(routes.listing)
    ctx.route(
        "GET",
        "/deliverables/{deliverable_id}",
        summary="A deliverable's content, streamed from Raw",
        content_type="application/octet-stream",
        responses={404: "No such deliverable, or its content is no longer stored", 503: "Raw cannot be read now"},
        tags=["deliverables"],
        auth="client",
        owned=Owned("deliverable", "deliverable_id", ctx.state.tenant_of_deliverable),
        scope="deliverables:read",
    )(routes.content)
