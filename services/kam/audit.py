"""KAM's audit trail: every call to ``/api/...`` and ``/v1/...`` recorded in the log, and read back.

An aiohttp middleware records each call as ``nexus.kam.audit.recorded`` in stream ``kam-audit``:
who (``user:<id>``, ``key:<id>``, ``worker:<name>``, ``anonymous``), the tenant the caller acts
for, the method, the route *template* (never the raw path or the query string), the id the path
named, the status, the client's address and the duration. Never a body, a header, a password or
a token. The probes (``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``) are not recorded.

Records are appended in batches (one append per ``NEXUS_KAM_AUDIT_FLUSH_SECONDS``), not one per
call: a busy console would otherwise double KAM's appends. A failed append is logged and its
records are kept for the next try (up to ``MAX_PENDING``); it never fails the call it records.
``GET /api/audit`` flushes this replica's pending records first, and shutdown flushes what is
left once the last request has been answered, so no record of a served call is lost by a
graceful stop (a killed process loses at most one flush interval).

``GET /api/audit`` answers from an in-memory index that follows stream ``kam-audit``
incrementally (like ``KeyView`` follows ``keys``): every replica's records, newest first, per
client. It keeps the newest ``NEXUS_KAM_AUDIT_INDEX_MAX`` records (500,000 by default; about
200 bytes each, so some 100 MB when full); older ones remain in the log. A client's page is a
slice of its own list (well under a millisecond); a filter on ``actor`` alone scans the records
newest first (about 0.5 µs each: a quarter of a second over a full index that matches nothing).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.proto import CloudEvent, new_event, parse_rfc3339
from nexus.proto.events.kam import KamAuditRecorded
from nexus.runtime import HTTPError, Service, json_response, route_template
from nexus.services.kam.context import KamContext
from nexus.services.kam.state import AUDIT_STREAM

__all__ = [
    "AUDIT_ACTOR",
    "AUDIT_RECORDED",
    "AuditIndex",
    "AuditPage",
    "AuditRecord",
    "AuditWriter",
    "audited",
    "install",
]

logger = logging.getLogger(__name__)

AUDIT_RECORDED = str(KamAuditRecorded.__event_type__)  # type: ignore[attr-defined]  # set by @event_type
AUDIT_ACTOR: web.RequestKey[tuple[str, str | None]] = web.RequestKey("kam_audit_actor", tuple)
"""Set by a handler that learns who the caller is without a credential (a login that
succeeded): ``(actor, client_id)`` for the audit record."""

AUDITED_PREFIXES = ("/api", "/v1")
MAX_PENDING = 10_000
"""Records kept for the next try while appends fail; beyond it the oldest are dropped (and counted)."""
BATCH_MAX = 500
"""Records per append."""
PAGE_MAX = 500
_RESOURCE_MAX = 256
_READ_BATCH = 5000
_RETRY_SECONDS = 1.0
_SKEW_SECONDS = 300.0
"""How far out of time order records of different replicas may be (``from=`` stops scanning
once records are this much older)."""


def audited(path: str) -> bool:
    """Whether a call to ``path`` is recorded (KAM's API, not its probes)."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in AUDITED_PREFIXES)


# -- writing --------------------------------------------------------------------------------------


class AuditWriter:
    """Collects audit records and appends them to stream ``kam-audit`` in batches.

    Args:
        ctx: KAM's context (the log, the source).
        flush_seconds: How long a record may wait for others before its batch is appended.
    """

    def __init__(self, ctx: KamContext, flush_seconds: float) -> None:
        self.ctx = ctx
        self.flush_seconds = flush_seconds
        self.pending: list[CloudEvent] = []
        self.dropped = 0
        """Records dropped because appends kept failing and MAX_PENDING were waiting."""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Task[bool]] = set()

    def record(self, data: KamAuditRecorded) -> None:
        """Queue one record; the background flush appends it."""
        self.pending.append(new_event(AUDIT_RECORDED, data, source=self.ctx.source, subject=data.actor))
        if len(self.pending) > MAX_PENDING:
            excess = len(self.pending) - MAX_PENDING
            del self.pending[:excess]
            self.dropped += excess
            logger.error("audit: %d records dropped (%d in all): the log keeps refusing them", excess, self.dropped)
        self._wake.set()

    async def run(self, service: Service) -> None:
        """Background task: append what is pending every ``flush_seconds`` while there is some;
        after a failed append, try again a second later even if no call comes in."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.flush_seconds:
                await asyncio.sleep(self.flush_seconds)
            if not await self.flush():
                await asyncio.sleep(_RETRY_SECONDS)
                self._wake.set()

    async def flush(self) -> bool:
        """Append every record pending now (one batch per BATCH_MAX); False when an append failed
        (its records are kept for the next try)."""
        async with self._lock:
            while self.pending:
                batch = self.pending[:BATCH_MAX]
                del self.pending[:BATCH_MAX]
                # Shielded: a flush cancelled at shutdown must not lose the batch it holds.
                write = asyncio.create_task(self._write(batch))
                self._writes.add(write)
                write.add_done_callback(self._writes.discard)
                if not await asyncio.shield(write):
                    return False
        return True

    async def _write(self, batch: list[CloudEvent]) -> bool:
        try:
            await self.ctx.service.log.append(AUDIT_STREAM, batch)
        except Exception:
            logger.exception("audit: appending %d records failed; they are kept for the next try", len(batch))
            room = max(0, MAX_PENDING - len(self.pending))
            self.dropped += len(batch) - min(room, len(batch))
            self.pending[:0] = batch[len(batch) - min(room, len(batch)) :]
            return False
        return True

    async def close(self, service: Service) -> None:
        """Shutdown hook (after the last request was answered): finish writes, flush the rest."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.flush()


def _caller(ctx: KamContext, request: web.Request) -> tuple[str, str | None]:
    info: KeyInfo | None = request.get(AUTH)
    if info is not None:
        return ctx.actor(info), info.tenant
    known = request.get(AUDIT_ACTOR)
    return known if known is not None else ("anonymous", None)


def _resource(request: web.Request) -> str | None:
    values = [v for v in request.match_info.values() if isinstance(v, str)]
    return "/".join(values)[:_RESOURCE_MAX] if values else None


def audit_middleware(ctx: KamContext, writer: AuditWriter) -> Any:
    """The middleware recording every call to KAM's API (see the module's docstring)."""

    @web.middleware
    async def audit(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not audited(request.path):
            return await handler(request)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except HTTPError as exc:
            status = exc.status
            raise
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away before the answer
            raise
        finally:
            try:
                actor, client_id = _caller(ctx, request)
                writer.record(
                    KamAuditRecorded(
                        actor=actor,
                        client_id=client_id,
                        method=request.method,
                        route=route_template(request),
                        resource=_resource(request),
                        status=status,
                        address=request.remote or "",
                        duration_ms=round((time.perf_counter() - started) * 1000, 3),
                    )
                )
            except Exception:
                logger.exception("audit: the call to %s could not be recorded", route_template(request))

    return audit


# -- reading --------------------------------------------------------------------------------------


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One audit record, as ``GET /api/audit`` answers it."""

    seq: int
    """Its version in stream ``kam-audit`` (the order records were appended in)."""
    at: str
    """When it was recorded (RFC 3339)."""
    actor: str
    client_id: str | None
    method: str
    route: str
    resource: str | None
    status: int
    address: str
    duration_ms: float


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of audit records, newest first."""

    records: list[AuditRecord]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next (older) page; None on the last page."""
    oldest_seq: int | None = None
    """The oldest record still in memory; older ones are only in the log's stream ``kam-audit``."""


_Entry = tuple[int, float, AuditRecord]
"""(seq, seconds since the epoch, record): what the index keeps per record."""


def _seq(entry: _Entry) -> int:
    return entry[0]


class AuditIndex:
    """The audit records of stream ``kam-audit``, in memory, in stream order and per client.

    Args:
        max_records: The newest records kept; older ones are dropped from memory (not from the log).
    """

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self.entries: list[_Entry] = []
        self.by_client: dict[str, list[_Entry]] = {}
        self.version = 0
        self._lock = asyncio.Lock()

    def add(self, event: CloudEvent) -> None:
        """Index one event of stream ``kam-audit``."""
        version = event.streamversion or 0
        if version <= self.version:
            return
        self.version = version
        if event.type != AUDIT_RECORDED:
            return
        data = msgspec.convert(event.data, KamAuditRecorded)
        record = AuditRecord(
            seq=version,
            at=event.time or "",
            actor=data.actor,
            client_id=data.client_id,
            method=data.method,
            route=data.route,
            resource=data.resource,
            status=data.status,
            address=data.address,
            duration_ms=data.duration_ms,
        )
        entry = (version, parse_rfc3339(event.time).timestamp() if event.time else 0.0, record)
        self.entries.append(entry)
        if data.client_id is not None:
            self.by_client.setdefault(data.client_id, []).append(entry)
        if len(self.entries) > self.max_records:
            self._trim()

    def _trim(self) -> None:
        # Drop the oldest tenth at once, so trimming costs O(1) per record on average.
        cut = max(1, self.max_records // 10)
        oldest_kept = self.entries[cut][0]
        del self.entries[:cut]
        for client_id, entries in list(self.by_client.items()):
            del entries[: bisect.bisect_left(entries, oldest_kept, key=_seq)]
            if not entries:
                del self.by_client[client_id]

    async def refresh(self, ctx: KamContext) -> None:
        """Index the records appended to the stream (by any replica) since the last refresh."""
        async with self._lock:
            while True:
                events = await ctx.service.log.read_stream(AUDIT_STREAM, self.version + 1, limit=_READ_BATCH)
                for event in events:
                    self.add(event)
                if len(events) < _READ_BATCH:
                    return

    def query(
        self,
        *,
        client_id: str | None = None,
        actor: str | None = None,
        start: float | None = None,
        end: float | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """Records matching every filter given, newest first, older than ``before`` (a ``seq``)."""
        base = self.by_client.get(client_id, []) if client_id is not None else self.entries
        index = len(base) if before is None else bisect.bisect_left(base, before, key=_seq)
        found: list[AuditRecord] = []
        for i in range(index - 1, -1, -1):
            _, at, record = base[i]
            if start is not None and at < start - _SKEW_SECONDS:
                break
            if actor is not None and record.actor != actor:
                continue
            if (start is not None and at < start) or (end is not None and at > end):
                continue
            if len(found) == limit:
                return AuditPage(records=found, next_cursor=str(found[-1].seq), oldest_seq=self._oldest())
            found.append(record)
        return AuditPage(records=found, next_cursor=None, oldest_seq=self._oldest())

    def _oldest(self) -> int | None:
        return self.entries[0][0] if self.entries else None


def _instant(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_rfc3339(text).timestamp()
    except ValueError:
        raise HTTPError(400, f"{name}={text!r} is not an RFC 3339 time (2026-01-31T12:00:00Z)") from None


def _int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise HTTPError(400, f"{name}={text!r}: use a whole number from {low} to {high}")
    return int(text)


class AuditRoutes:
    """``GET /api/audit``."""

    def __init__(self, ctx: KamContext, writer: AuditWriter, index: AuditIndex) -> None:
        self.ctx = ctx
        self.writer = writer
        self.index = index

    async def list(self, request: web.Request) -> web.Response:
        """Audit records, newest first: an admin sees every client's (filter with ``client_id``), a
        client only its own tenant's. This replica's pending records are appended first, so a call
        just made is listed."""
        info: KeyInfo = request[AUTH]
        client_id = request.query.get("client_id") or None
        if not info.is_admin:
            if client_id is not None and client_id != info.tenant:
                return json_response(AuditPage(records=[]))
            client_id = info.tenant
        start, end = _instant(request, "from"), _instant(request, "to")
        limit = _int(request, "limit", 100, 1, PAGE_MAX) or 100
        before = _int(request, "cursor", None, 1, 2**62)
        await self.writer.flush()
        await self.index.refresh(self.ctx)
        page = self.index.query(
            client_id=client_id,
            actor=request.query.get("actor") or None,
            start=start,
            end=end,
            before=before,
            limit=limit,
        )
        return json_response(page)


def install(ctx: KamContext) -> AuditWriter:
    """Record every call to KAM's API, and serve ``GET /api/audit``."""
    service = ctx.service
    writer = AuditWriter(ctx, ctx.settings.audit_flush_seconds)
    index = AuditIndex(ctx.settings.audit_index_max)
    service.app.middlewares.append(audit_middleware(ctx, writer))
    service.background(writer.run)
    service.on_shutdown(writer.close)
    routes = AuditRoutes(ctx, writer, index)
    ctx.route(
        "GET",
        "/audit",
        summary="The audit trail: every call to KAM (who, what, when, outcome)",
        response=AuditPage,
        tags=["audit"],
        auth="client",
        scope="audit:read",
        query={
            "actor": "only this caller (user:<id>, key:<id>, worker:<name>, anonymous)",
            "client_id": "only calls made for this client (an admin's filter; a client sees only its own)",
            "from": "only records at or after this RFC 3339 time",
            "to": "only records at or before this RFC 3339 time",
            "limit": f"records per page, 1-{PAGE_MAX} (default 100)",
            "cursor": "the next_cursor of the previous page",
        },
        responses={400: "A query parameter is not valid", 403: "The credential lacks scope audit:read"},
    )(routes.list)
    return writer
