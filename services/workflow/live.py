"""Live updates for users: every transition that concerns a user, as it happens (seed 001).

``GET /users/{user_id}/updates`` streams them as Server-Sent Events; ``GET /users/{user_id}/ws``
is a WebSocket that receives the same updates as JSON messages. Each replica follows the event
log, so a user connected to any replica sees transitions driven by every replica. An event
concerns a user when it is in the user's phase stream (a phase trigger, its work: claims routed,
smart prompts, submissions, decisions, payouts, ledger entries, and every ``phase.updated``) or
it belongs to an execution whose input names ``user_id`` (learned from the execution's
``queued`` event).

A user belongs to the client that created it: the tenant of a phase stream is the envelope's
``tenant`` (and the stream's name), and a connection follows one user of the caller's tenant
only; another client's user of the same id is another user, and an unknown one is a 404.

Each update is counted in ``nexus_workflow_user_transitions_total{workflow, status}`` on
``/metrics`` (seed 001's "phase transition metrics"); the open connections are
``nexus_workflow_live_connections{transport}``, and ``GET /api/v1/workflow/stats`` gives them
with the queue's statistics (seed 001's ``getConnectedClientsCount`` and ``getQueueStats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import WSMsgType, web
from prometheus_client import Counter, Gauge

from nexus.auth import AUTH
from nexus.proto import PLATFORM_TENANT, CloudEvent
from nexus.replay import tail
from nexus.runtime import EventStream, HTTPError, Service, json_response
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.phases import user_has_phases, user_of_stream

logger = logging.getLogger("nexus.workflow.live")

__all__ = ["CONNECTIONS", "TRANSITIONS", "UserHub", "install", "update_of"]

TRANSITIONS = Counter(
    "nexus_workflow_user_transitions",
    "Transitions of executions (and phase triggers) that concern a user, by workflow and status.",
    ["workflow", "status"],
)
CONNECTIONS = Gauge(
    "nexus_workflow_live_connections",
    "Users' live-update connections open on this replica, by transport (sse, websocket): sum over replicas.",
    ["transport"],
)

_EXECUTION_PREFIX = "nexus.workflow."
_QUEUED = "nexus.workflow.execution.queued"
_PHASE_TRIGGERED = "nexus.workflow.phase.triggered"
_MAX_EXECUTIONS = 100_000
_QUEUE_SIZE = 1000


def update_of(event: CloudEvent, user_id: str, workflow_id: str | None) -> dict[str, Any]:
    """The update a user receives for one event."""
    data = event.data if isinstance(event.data, dict) else {}
    kind = event.type.removeprefix(_EXECUTION_PREFIX)
    update: dict[str, Any] = {
        "type": kind,
        "user_id": user_id,
        "time": event.time,
        "event_id": event.id,
        "position": event.position,
    }
    if (event.streamid or "").startswith("phases-"):
        # The phase's own record: every field but the bulky ones (evidence, metadata).
        update.update({k: v for k, v in data.items() if k not in ("user_id", "evidence", "metadata")})
        if event.type == _PHASE_TRIGGERED:
            update.setdefault("sync_id", "")
        return update
    update["execution_id"] = data.get("execution_id") or (event.streamid or "").removeprefix("execution-")
    update["workflow_id"] = workflow_id
    for key in ("step_id", "attempt", "error", "output", "status"):
        if key in data:
            update[key] = data[key]
    return update


User = tuple[str, str]
"""(tenant, user id): user ids are per tenant."""


class UserHub:
    """Routes the log's events to the connections of the users they concern."""

    def __init__(self) -> None:
        self._listeners: dict[User, set[asyncio.Queue[dict[str, Any]]]] = {}
        # Execution id → (tenant, user id, workflow id), for executions whose input names a user.
        self._executions: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self._transports: dict[int, str] = {}

    def listen(self, user: User, transport: str = "sse") -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_SIZE)
        self._listeners.setdefault(user, set()).add(queue)
        self._transports[id(queue)] = transport
        CONNECTIONS.labels(transport).inc()
        return queue

    def unlisten(self, user: User, queue: asyncio.Queue[dict[str, Any]]) -> None:
        listeners = self._listeners.get(user)
        if listeners is not None and queue in listeners:
            listeners.discard(queue)
            CONNECTIONS.labels(self._transports.pop(id(queue), "sse")).dec()
            if not listeners:
                del self._listeners[user]

    def connections(self, user: User | None = None, *, tenant: str | None = None) -> int:
        """Open connections: of one user, of one tenant's users, or of all."""
        if user is not None:
            return len(self._listeners.get(user, ()))
        return sum(len(v) for (owner, _), v in self._listeners.items() if tenant is None or owner == tenant)

    def by_transport(self, tenant: str | None = None) -> dict[str, int]:
        """Open connections by transport (``sse``, ``websocket``), of one tenant or of all."""
        counts = {"sse": 0, "websocket": 0}
        for (owner, _), queues in self._listeners.items():
            if tenant is None or owner == tenant:
                for queue in queues:
                    transport = self._transports.get(id(queue), "sse")
                    counts[transport] = counts.get(transport, 0) + 1
        return counts

    def route(self, event: CloudEvent) -> tuple[User, dict[str, Any]] | None:
        """The (tenant, user) and update for ``event``, or None when it concerns no user."""
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == _QUEUED:
            given = data.get("input")
            user = given.get("user_id") if isinstance(given, dict) else None
            if isinstance(user, str) and data.get("execution_id"):
                tenant = str(event.tenant or data.get("tenant") or PLATFORM_TENANT)
                self._executions[data["execution_id"]] = (tenant, user, str(data.get("workflow_id", "")))
                if len(self._executions) > _MAX_EXECUTIONS:
                    self._executions.popitem(last=False)
        stream = event.streamid or ""
        owner = user_of_stream(stream, event.tenant)
        if owner is not None:
            # The stream names the user and its client: the only user these updates go to.
            return owner, update_of(event, owner[1], None)
        if not stream.startswith("execution-"):
            return None
        known = self._executions.get(data.get("execution_id") or stream.removeprefix("execution-"))
        if known is None:
            return None
        tenant, user, workflow_id = known
        return (tenant, user), update_of(event, user, workflow_id)

    def publish(self, event: CloudEvent) -> None:
        routed = self.route(event)
        if routed is None:
            return
        user, update = routed
        TRANSITIONS.labels(update.get("workflow_id") or "phase_trigger", update["type"]).inc()
        for queue in list(self._listeners.get(user, ())):
            with contextlib.suppress(asyncio.QueueFull):
                # A connection that does not keep up loses updates rather than slowing the others.
                queue.put_nowait(update)


HUB = web.AppKey("nexus.workflow.user_hub", UserHub)


class Connected(msgspec.Struct, frozen=True, kw_only=True):
    """The WebSocket's first message; then one message per update (``update_of``)."""

    type: str
    user_id: str


class LiveStats(msgspec.Struct, frozen=True, kw_only=True):
    """Seed 001's monitoring: connected clients (this replica's) and the queue (the log's)."""

    connected_clients: int
    """Live-update connections open on this replica (of the caller's users; an admin's: all)."""
    connections: dict[str, int]
    """The same, by transport (``sse``, ``websocket``)."""
    queue: dict[str, Any]
    """The queue as ``GET /queue/stats`` shows it to the caller."""


def _user_of(request: web.Request) -> User:
    """The caller's (tenant, user); an admin may name another tenant with ``?tenant=``."""
    info = request[AUTH]
    tenant = (request.query.get("tenant") or info.tenant) if info.is_admin else info.tenant
    return tenant, request.match_info["user_id"]


def install(service: Service, ctx: WorkflowContext) -> None:
    """Add ``/users/{user_id}/updates`` (SSE) and ``/users/{user_id}/ws`` (WebSocket).

    A user is one of the caller's tenant, known once a phase was triggered for it (else 404): a
    connection receives the updates of that tenant's user only, whatever other tenants have a
    user of the same id. A client that closes its connection is the normal end of a stream, not
    an error.
    """
    app = service.app
    hub = UserHub()
    app[HUB] = hub
    admin_query = {"tenant": "admins only: the tenant whose user to follow (default: their own)"}

    async def _known_user(request: web.Request) -> User:
        user = _user_of(request)
        # A user exists once a phase was triggered for it; another tenant's is answered as a missing one.
        if not await user_has_phases(ctx, *user):
            raise HTTPError(404, f"no user {user[1]!r}: no phase was triggered for it")
        if user[0] != request[AUTH].tenant:
            route = request.match_info.route.resource
            await service.audit_admin(
                request[AUTH], "GET", route.canonical if route else request.path, f"user {user[1]}", user[0]
            )
        return user

    @service.route(
        "GET",
        "/users/{user_id}/updates",
        summary="Server-Sent Events: every transition that concerns one of the caller's users, live",
        content_type="text/event-stream",
        responses={404: "The caller has no such user (no phase was triggered for it)"},
        tags=["phases"],
        auth="client",
        query=admin_query,
    )
    async def sse(request: web.Request) -> web.StreamResponse:
        user = await _known_user(request)
        queue = hub.listen(user, "sse")

        async def updates() -> AsyncIterator[dict[str, Any]]:
            while True:
                yield await queue.get()

        try:
            async with EventStream(request, keepalive=ctx.settings.sse_keepalive_seconds) as sse:
                await sse.comment("connected")
                async for update in sse.each(updates()):
                    text = json.dumps(update, default=str)
                    await sse.send(text, event=update["type"], id=update["position"])
        finally:
            hub.unlisten(user, queue)
        return sse.response

    @service.route(
        "GET",
        "/users/{user_id}/ws",
        summary="WebSocket: the same updates as JSON messages ('ping' is answered with the connection count)",
        response=Connected,
        status=101,
        responses={
            400: "Not a WebSocket upgrade request",
            404: "The caller has no such user (no phase was triggered for it)",
        },
        tags=["phases"],
        auth="client",
        query=admin_query,
    )
    async def websocket(request: web.Request) -> web.WebSocketResponse:
        user = await _known_user(request)
        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        queue = hub.listen(user, "websocket")

        async def forward() -> None:
            while True:
                await ws.send_str(json.dumps(await queue.get(), default=str))

        sender = asyncio.create_task(forward())
        try:
            await ws.send_str(json.dumps({"type": "connected", "user_id": user[1]}))
            async for message in ws:
                # The socket is for updates; a client's text is answered with its connection count.
                if message.type == WSMsgType.TEXT and message.data == "ping":
                    await ws.send_str(json.dumps({"type": "pong", "connections": hub.connections(user)}))
        except ConnectionResetError:
            logger.debug("live updates of %s: the client closed the socket", user[1])
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await sender
            hub.unlisten(user, queue)
        return ws

    @service.route(
        "GET",
        "/api/v1/workflow/stats",
        summary="Connected live-update clients and the queue's statistics (the caller's; an admin's: all)",
        response=LiveStats,
        tags=["phases"],
        auth="client",
        query={"tenant": "admins only: one tenant's figures (default: the whole platform)"},
    )
    async def stats(request: web.Request) -> web.Response:
        info = request[AUTH]
        tenant = (request.query.get("tenant") or None) if info.is_admin else info.tenant
        if tenant is not None and tenant != info.tenant:
            await service.audit_admin(info, "GET", "/api/v1/workflow/stats", "stats", tenant, 200)
        body = LiveStats(
            connected_clients=hub.connections(tenant=tenant),
            connections=hub.by_transport(tenant),
            queue=ctx.engine.queue_stats(tenant),
        )
        return json_response(body)

    async def follow(app: web.Application) -> Any:
        async def run() -> None:
            # From the head: updates are live; earlier history is in the audit endpoints. Executions
            # queued earlier are learned from their streams when one of their events arrives.
            await tail(ctx.log, hub.publish, start=await ctx.log.head() + 1, name="workflow live")

        task = asyncio.create_task(run(), name="workflow-live")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(follow)
