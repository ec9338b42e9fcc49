"""Live updates for users: every transition that concerns a user, as it happens (seed 001).

``GET /users/{user_id}/updates`` streams them as Server-Sent Events; ``GET /users/{user_id}/ws``
is a WebSocket that receives the same updates as JSON messages. Each replica follows the event
log, so a user connected to any replica sees transitions driven by every replica. An event
concerns a user when its data names ``user_id`` (a phase trigger) or it belongs to an execution
whose input names ``user_id`` (learned from the execution's ``queued`` event).

Each update is counted in ``nexus_workflow_user_transitions_total{workflow, status}`` on
``/metrics`` (seed 001's "phase transition metrics").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import Counter

from nexus.proto import CloudEvent
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.jobapi import job_settings, key_view, require_key

__all__ = ["TRANSITIONS", "UserHub", "install", "update_of"]

TRANSITIONS = Counter(
    "nexus_workflow_user_transitions",
    "Transitions of executions (and phase triggers) that concern a user, by workflow and status.",
    ["workflow", "status"],
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
    if event.type == _PHASE_TRIGGERED:
        update["phase"] = data.get("phase")
        update["sync_id"] = data.get("sync_id")
        return update
    update["execution_id"] = data.get("execution_id") or (event.streamid or "").removeprefix("execution-")
    update["workflow_id"] = workflow_id
    for key in ("step_id", "attempt", "error", "output", "status"):
        if key in data:
            update[key] = data[key]
    return update


class UserHub:
    """Routes the log's events to the connections of the users they concern."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        # Execution id → (user id, workflow id), for executions whose input names a user.
        self._executions: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def listen(self, user_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_SIZE)
        self._listeners.setdefault(user_id, set()).add(queue)
        return queue

    def unlisten(self, user_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        listeners = self._listeners.get(user_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[user_id]

    def connections(self, user_id: str | None = None) -> int:
        """Open connections (of one user, or of all)."""
        if user_id is not None:
            return len(self._listeners.get(user_id, ()))
        return sum(len(v) for v in self._listeners.values())

    def route(self, event: CloudEvent) -> tuple[str, dict[str, Any]] | None:
        """The user and update for ``event``, or None when it concerns no user."""
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == _QUEUED:
            given = data.get("input")
            user = given.get("user_id") if isinstance(given, dict) else None
            if isinstance(user, str) and data.get("execution_id"):
                self._executions[data["execution_id"]] = (user, str(data.get("workflow_id", "")))
                if len(self._executions) > _MAX_EXECUTIONS:
                    self._executions.popitem(last=False)
        if event.type == _PHASE_TRIGGERED and isinstance(data.get("user_id"), str):
            return data["user_id"], update_of(event, data["user_id"], None)
        stream = event.streamid or ""
        if not stream.startswith("execution-"):
            return None
        known = self._executions.get(data.get("execution_id") or stream.removeprefix("execution-"))
        if known is None:
            return None
        user, workflow_id = known
        return user, update_of(event, user, workflow_id)

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


def install(app: web.Application, ctx: WorkflowContext) -> None:
    """Add ``/users/{user_id}/updates`` (SSE) and ``/users/{user_id}/ws`` (WebSocket)."""
    hub = UserHub()
    app[HUB] = hub
    job_settings(app)
    guard = require_key(key_view(app, ctx))

    async def sse(request: web.Request) -> web.StreamResponse:
        user_id = request.match_info["user_id"]
        queue = hub.listen(user_id)
        try:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            )
            await response.prepare(request)
            await response.write(b": connected\n\n")
            keepalive = job_settings(request.app).sse_keepalive_seconds
            while True:
                try:
                    update = await asyncio.wait_for(queue.get(), keepalive)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                text = json.dumps(update, default=str)
                await response.write(f"event: {update['type']}\nid: {update['position']}\ndata: {text}\n\n".encode())
        finally:
            hub.unlisten(user_id, queue)

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        user_id = request.match_info["user_id"]
        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        queue = hub.listen(user_id)

        async def forward() -> None:
            while True:
                await ws.send_str(json.dumps(await queue.get(), default=str))

        sender = asyncio.create_task(forward())
        try:
            await ws.send_str(json.dumps({"type": "connected", "user_id": user_id}))
            async for message in ws:
                # The socket is for updates; a client's text is answered with its connection count.
                if message.type == WSMsgType.TEXT and message.data == "ping":
                    await ws.send_str(json.dumps({"type": "pong", "connections": hub.connections(user_id)}))
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await sender
            hub.unlisten(user_id, queue)
        return ws

    app.router.add_get("/users/{user_id}/updates", guard(sse))
    app.router.add_get("/users/{user_id}/ws", guard(websocket))

    async def follow(app: web.Application) -> Any:
        async def run() -> None:
            # From the head: updates are live; earlier history is in the audit endpoints. Executions
            # queued earlier are learned from their streams when one of their events arrives.
            start = await ctx.log.head() + 1
            async for event in ctx.log.subscribe(start):
                hub.publish(event)

        task = asyncio.create_task(run(), name="workflow-live")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(follow)
