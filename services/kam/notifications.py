"""KAM's notifications: a client's request transitions, live, over Server-Sent Events.

``GET /api/notifications/stream`` sends every ``nexus.kam.request.*`` and
``nexus.kam.deliverable.recorded`` event of the caller's tenant (an admin: of every tenant) as
KAM's fold sees it (a follower, ``ctx.on_event``), with the event's log position as its SSE
``id``. A client reconnecting with ``Last-Event-ID`` first gets what it missed, read from the
log, then the live ones, none twice. A subscriber that cannot keep up is disconnected (its
queue is bounded) and catches up from the log when it reconnects. A stream ends when the
credential that opened it does: its session's expiry, a logout or password change
(``nexus.kam.session.closed``), or its key's revocation (``nexus.platform.key.revoked``).

The same events reach NATS subscribers without KAM: the relay publishes every log event on
``nexus.evt.<type without "nexus.">`` (``nexus.evt.kam.request.completed``…), each carrying its
client in the CloudEvents ``tenant`` extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KEY_REVOKED, KeyInfo
from nexus.proto import CloudEvent
from nexus.runtime import EventStream
from nexus.services.kam.context import SESSION_KEY_PREFIX, KamContext
from nexus.services.kam.state import (
    DELIVERABLE_RECORDED,
    REQUEST_COMPLETED,
    REQUEST_CREATED,
    REQUEST_EXECUTING,
    REQUEST_FAILED,
    REQUEST_UPDATED,
    SESSION_CLOSED,
    TEMPLATE_ASSIGNED,
    KamState,
)

__all__ = ["NOTIFIED_TYPES", "Notifier", "install", "notification"]

NOTIFIED_TYPES = (
    REQUEST_CREATED,
    REQUEST_UPDATED,
    TEMPLATE_ASSIGNED,
    REQUEST_EXECUTING,
    REQUEST_COMPLETED,
    REQUEST_FAILED,
    DELIVERABLE_RECORDED,
)
"""What a client is notified of: its requests' events and their deliverables."""

STATUS_AFTER = {
    REQUEST_CREATED: "pending",
    TEMPLATE_ASSIGNED: "template_assigned",
    REQUEST_EXECUTING: "executing",
    REQUEST_COMPLETED: "completed",
    REQUEST_FAILED: "failed",
}
"""The request's status after each transition."""

KEEPALIVE_SECONDS = 15.0
QUEUE_LIMIT = 1000
"""Events held for one slow subscriber before it is disconnected (it resumes from the log)."""

_OVERFLOW = -1
_PAGE = 1000


def tenant_of(state: KamState, event: CloudEvent) -> str | None:
    """The client an event is about: its request's owner, else the event's ``tenant``."""
    data = event.data if isinstance(event.data, Mapping) else {}
    request_id = data.get("request_id")
    owner = state.tenant_of_request(str(request_id)) if request_id is not None else None
    return owner or data.get("client_id") or event.tenant


def notification(event: CloudEvent, tenant: str | None) -> bytes:
    """The ``data`` of an event's SSE frame: the event's data, its client, time and the status it leads to."""
    data = dict(event.data) if isinstance(event.data, Mapping) else {}
    body: dict[str, Any] = {**data, "type": event.type, "time": event.time, "client_id": tenant}
    status = STATUS_AFTER.get(event.type)
    if status is not None:
        body["status"] = status
    return msgspec.json.encode(body)


@dataclass(eq=False)
class Subscriber:
    """One open stream: its tenant (None: an admin, every tenant) and its queue of (position, event)."""

    tenant: str | None
    key_id: str = ""
    """The credential that opened the stream (``session:<id>`` or a key id): it ends with it."""
    queue: asyncio.Queue[tuple[int, CloudEvent | None]] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))

    def end(self) -> None:
        """End the stream (the marker takes the slot kept for it)."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((_OVERFLOW, None))

    def sees(self, tenant: str | None) -> bool:
        return self.tenant is None or (tenant is not None and tenant == self.tenant)

    async def items(self) -> AsyncIterator[tuple[int, CloudEvent]]:
        while True:
            position, event = await self.queue.get()
            if event is None:
                return  # overflowed: the stream ends, the client resumes from the log
            yield position, event


class Notifier:
    """Hands the events the fold sees to the open streams that may see them."""

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx
        self.subscribers: set[Subscriber] = set()

    def observe(self, event: CloudEvent) -> None:
        """Follower of the fold (runs after the event is folded, so its request is known)."""
        if event.type in (SESSION_CLOSED, KEY_REVOKED) and isinstance(event.data, Mapping):
            ended = (
                SESSION_KEY_PREFIX + str(event.data.get("session_id"))
                if event.type == SESSION_CLOSED
                else str(event.data.get("key_id"))
            )
            for subscriber in [s for s in self.subscribers if s.key_id == ended]:
                self.subscribers.discard(subscriber)
                subscriber.end()
            return
        if event.type not in NOTIFIED_TYPES or not self.subscribers or event.position is None:
            return
        tenant = tenant_of(self.ctx.state, event)
        for subscriber in list(self.subscribers):
            if not subscriber.sees(tenant):
                continue
            queue = subscriber.queue
            if queue.qsize() >= QUEUE_LIMIT - 1:
                # One slot is kept for the end marker; the subscriber is dropped.
                self.subscribers.discard(subscriber)
                queue.put_nowait((_OVERFLOW, None))
                continue
            queue.put_nowait((event.position, event))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The caller's request transitions as Server-Sent Events (``event`` = the event type, ``id`` =
        its log position); with ``Last-Event-ID``, the ones after it first, read from the log."""
        info: KeyInfo = request[AUTH]
        subscriber = Subscriber(tenant=None if info.is_admin else info.tenant, key_id=info.key_id)
        session = self.ctx.state.sessions.get(info.key_id.removeprefix(SESSION_KEY_PREFIX))
        lifetime = session.expires_at - time.time() if session is not None else None
        # Subscribed before the log is read: an event folded meanwhile is in the queue and
        # maybe in the history too; positions tell which ones were sent.
        self.subscribers.add(subscriber)
        try:
            async with EventStream(request, keepalive=KEEPALIVE_SECONDS) as sse:
                # A session's stream ends at the session's expiry, as the session does.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(lifetime):
                        last = 0
                        after = sse.last_event_version()
                        if after is not None:
                            last = await self._missed(sse, subscriber, after)
                        async for position, event in sse.each(subscriber.items()):
                            if position <= last:
                                continue
                            last = position
                            frame = notification(event, tenant_of(self.ctx.state, event))
                            await sse.send(frame, event=event.type, id=position)
            return sse.response
        finally:
            with contextlib.suppress(KeyError):
                self.subscribers.remove(subscriber)

    async def _missed(self, sse: EventStream, subscriber: Subscriber, after: int) -> int:
        """Send the subscriber's events after position ``after`` up to what the fold has seen
        (later ones arrive through the queue); the last position covered."""
        upto = self.ctx.state.position
        position = after
        while position < upto:
            batch = await self.ctx.service.log.read_all(position + 1, _PAGE, NOTIFIED_TYPES)
            if not batch:
                break
            for event in batch:
                if (event.position or 0) > upto:
                    return upto
                tenant = tenant_of(self.ctx.state, event)
                if subscriber.sees(tenant):
                    await sse.send(notification(event, tenant), event=event.type, id=event.position)
            position = batch[-1].position or upto
        return max(after, upto)

    def close_all(self) -> None:
        """End every open stream (its clients reconnect with Last-Event-ID elsewhere or later)."""
        for subscriber in list(self.subscribers):
            self.subscribers.discard(subscriber)
            subscriber.end()

    async def hold(self) -> None:
        """Runs while the service runs; when a stop cancels it, the open streams end.

        A stopping service cancels its background tasks before it waits for the requests in
        flight: without this, every open stream would hold the stop for the whole shutdown
        timeout."""
        try:
            await asyncio.Event().wait()
        finally:
            self.close_all()


def install(ctx: KamContext) -> Notifier:
    """Add the notification stream to KAM."""
    notifier = Notifier(ctx)
    # Key revocations too (stream ``keys``), to end the streams of a revoked key.
    ctx.on_event(notifier.observe, types=(KEY_REVOKED,))

    @ctx.service.background
    async def end_streams_at_stop(service: Any) -> None:
        await notifier.hold()

    ctx.route(
        "GET",
        "/notifications/stream",
        summary="The caller's request transitions, live (Server-Sent Events; Last-Event-ID resumes)",
        content_type="text/event-stream",
        tags=["notifications"],
        auth="client",
        scope="notifications:read",
    )(notifier.stream)
    return notifier
