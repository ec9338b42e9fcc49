"""KAM's operator routes behind the console's admin pages: the cost ledger across clients, and the
dead letters (list, redrive).

``GET /api/costs`` lists the ledger entries of every client (``KamState.ledger``, the same fold
the per-client report sums), filtered, newest first, with totals per client and per template in
each currency. A client has its own report (``GET /api/clients/{client_id}/costs``); this one is
the platform's, so it is the admins'.

``GET /api/dead-letters`` and ``POST /api/dead-letters/redrive`` read and redrive stream
NEXUS_DLQ through ``nexus.bus.deadletters``, the functions ``nexus dlq`` runs, over KAM's own
NATS connection. KAM's identity may read the stream and delete from it (the JetStream API) and
republish commands (``nexus.cmd.>``), not platform events (only the relay publishes those) nor
external ones (only their producers): a dead letter KAM may not send back is listed as such,
naming the ``nexus dlq redrive`` command the operator runs instead.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

import msgspec
from aiohttp import web

from nexus.auth import ADMIN_SCOPE
from nexus.bus import BusError
from nexus.bus.deadletters import (
    DeadLetter,
    PublishCheck,
    dead_letters,
    describe,
    find,
    not_redrivable,
    redrive,
    redrive_one,
)
from nexus.bus.embedded import IDENTITIES
from nexus.proto import STREAM_DLQ, parse_rfc3339
from nexus.runtime import HTTPError, json_response, read_json
from nexus.services.kam.context import KamContext
from nexus.services.kam.costs import _bound, total
from nexus.services.kam.state import LedgerEntry

__all__ = [
    "CostEntry",
    "CostTotal",
    "DeadLetterList",
    "LedgerAnswer",
    "RedriveAnswer",
    "RedriveBody",
    "install",
    "ledger",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
KINDS = ("run", "tokens", "stage")
_CONSUMER = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


# -- the ledger ---------------------------------------------------------------------------------


class CostEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One ledger entry, with the names people know it by."""

    entry_id: str
    client_id: str
    client_name: str
    amount: float
    currency: str
    kind: str
    """``run``, ``tokens`` or ``stage``."""
    quantity: float
    request_id: str | None
    execution_id: str | None
    template_id: str | None
    template_name: str | None
    at: str


class CostTotal(msgspec.Struct, frozen=True, kw_only=True):
    """The sum of the matching entries of one client or one template, in one currency."""

    key: str
    """The client's id, or the template's id (``none`` for costs of no template)."""
    name: str
    currency: str
    amount: float
    entries: int


class LedgerAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/costs``: a page of entries (newest first) and the totals of every matching entry."""

    entries: list[CostEntry]
    next_cursor: str | None
    """Pass it as ``cursor`` for the next page; None on the last page."""
    matching: int
    """How many entries match the filters (every page's)."""
    by_client: list[CostTotal]
    by_template: list[CostTotal]
    by_currency: dict[str, float]


def _encode_cursor(ordinal: int) -> str:
    return base64.urlsafe_b64encode(f"c1:{ordinal}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    """The ledger ordinal a cursor stands for (entries are never removed, so pages are stable)."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "c1":
            raise ValueError(prefix)
        return int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HTTPError(400, "cursor: not a cursor this API gave (pass next_cursor as it came)") from None


def _limit(raw: str | None, default: int, most: int) -> int:
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise HTTPError(400, f"limit: {raw[:40]!r} is not a whole number") from None
    if not 1 <= limit <= most:
        raise HTTPError(400, f"limit: {limit} is outside 1..{most}")
    return limit


def _totals(groups: dict[tuple[str, str], list[float]], names: dict[str, str]) -> list[CostTotal]:
    return [
        CostTotal(key=key, name=names.get(key, key), currency=currency, amount=total(amounts), entries=len(amounts))
        for (key, currency), amounts in sorted(groups.items(), key=lambda item: (-total(item[1]), item[0]))
    ]


def ledger(ctx: KamContext, query: Any) -> LedgerAnswer:
    """The ledger answer for ``query`` (``client_id``, ``template``, ``request_id``, ``kind``, ``from``,
    ``to``, ``limit``, ``cursor``): a pure function of the fold, like the per-client report."""
    state = ctx.state
    client_id = query.get("client_id") or None
    request_id = query.get("request_id") or None
    kind = query.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise HTTPError(400, f"kind: {kind[:40]!r} is not one of {', '.join(KINDS)}")
    template_names = {key: str(t.get("name") or key) for key, t in state.templates.items()}
    template = query.get("template") or None
    template_id: str | None = None
    if template is not None:
        template_id = template if template in state.templates else None
        template_id = template_id or next((k for k, n in template_names.items() if n == template), None)
        if template_id is None:
            raise HTTPError(400, f"template: no template with id or name {template[:64]!r}")
    start = _bound("from", query.get("from"), upper=False)
    end = _bound("to", query.get("to"), upper=True)
    if start is not None and end is not None and start > end:
        raise HTTPError(400, "from is after to", error="invalid_query")
    limit = _limit(query.get("limit"), DEFAULT_LIMIT, MAX_LIMIT)
    before = _decode_cursor(query["cursor"]) if "cursor" in query else None

    def wanted(entry: LedgerEntry) -> bool:
        if client_id is not None and entry.client_id != client_id:
            return False
        if request_id is not None and entry.request_id != request_id:
            return False
        if kind is not None and entry.kind != kind:
            return False
        if template_id is not None and entry.template_id != template_id:
            return False
        if start is not None or end is not None:
            at = parse_rfc3339(entry.at) if entry.at else None
            if at is None or (start is not None and at < start) or (end is not None and at >= end):
                return False
        return True

    matching = [(ordinal, entry) for ordinal, entry in enumerate(state.ledger) if wanted(entry)]
    by_client: dict[tuple[str, str], list[float]] = {}
    by_template: dict[tuple[str, str], list[float]] = {}
    by_currency: dict[str, list[float]] = {}
    for _, entry in matching:
        by_client.setdefault((entry.client_id, entry.currency), []).append(entry.amount)
        by_template.setdefault((entry.template_id or "none", entry.currency), []).append(entry.amount)
        by_currency.setdefault(entry.currency, []).append(entry.amount)
    page: list[CostEntry] = []
    next_cursor: str | None = None
    for ordinal, entry in reversed(matching):
        if before is not None and ordinal >= before:
            continue
        if len(page) == limit:
            next_cursor = _encode_cursor(ordinal + 1)
            break
        client = state.clients.get(entry.client_id)
        page.append(
            CostEntry(
                entry_id=entry.entry_id,
                client_id=entry.client_id,
                client_name=client.name if client is not None else entry.client_id,
                amount=entry.amount,
                currency=entry.currency,
                kind=entry.kind,
                quantity=entry.quantity,
                request_id=entry.request_id,
                execution_id=entry.execution_id,
                template_id=entry.template_id,
                template_name=template_names.get(entry.template_id or ""),
                at=entry.at,
            )
        )
    client_names = {key: c.name for key, c in state.clients.items()}
    return LedgerAnswer(
        entries=page,
        next_cursor=next_cursor,
        matching=len(matching),
        by_client=_totals(by_client, client_names),
        by_template=_totals(by_template, {**template_names, "none": "no template"}),
        by_currency={currency: total(amounts) for currency, amounts in sorted(by_currency.items())},
    )


# -- dead letters -------------------------------------------------------------------------------


class DeadLetterList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/dead-letters``: the oldest first."""

    dead_letters: list[DeadLetter]
    total: int
    """Messages in NEXUS_DLQ now (every consumer's)."""
    more: bool
    """More dead letters match than ``limit`` shows."""
    identity: str | None
    """The NATS identity KAM redrives as (None: one this table does not know; the server decides)."""


class RedriveBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/dead-letters/redrive``: one dead letter (``seq``), one consumer's, or all (neither)."""

    seq: Annotated[int, msgspec.Meta(ge=1)] | None = None
    consumer: str | None = None


class RedriveAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What the redrive did."""

    redriven: int
    problems: list[str]
    """A line per dead letter left in NEXUS_DLQ, saying why."""


def publish_check(ctx: KamContext) -> PublishCheck | None:
    """What KAM's NATS identity may publish, when it is one of the platform's (``nexus up``, deploy/)."""
    user = ctx.settings.platform.nats_user
    permissions = IDENTITIES.get(user) if user else None
    return permissions.may_publish if permissions is not None else None


def _consumer(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not _CONSUMER.match(raw):
        raise HTTPError(400, f"consumer: {raw[:64]!r} is not a consumer name (letters, digits, '_' and '-')")
    return raw


def _unavailable(exc: BusError) -> HTTPError:
    return HTTPError(503, f"NATS does not answer ({exc}); try again shortly", error="unavailable")


class OperationRoutes:
    """The handlers of the ledger and dead-letter routes."""

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx

    async def costs(self, request: web.Request) -> web.Response:
        """Every client's ledger entries, newest first, with totals per client and per template (each
        in its currency) over every matching entry, not only the page shown."""
        return json_response(ledger(self.ctx, request.query))

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        """The dead letters of stream NEXUS_DLQ (one consumer's when named), oldest first: who gave up
        on what, why, and whether KAM may redrive it. Payloads are not shown (they may be any
        client's data); each one's size is."""
        consumer = _consumer(request.query.get("consumer"))
        limit = _limit(request.query.get("limit"), DEFAULT_LIMIT, MAX_LIMIT)
        check = publish_check(self.ctx)
        bus = self.ctx.service.bus
        shown: list[DeadLetter] = []
        more = False
        try:
            async for message in dead_letters(bus, consumer):
                if len(shown) == limit:
                    more = True
                    break
                shown.append(describe(message, check))
            stored = (await bus.stream_state(STREAM_DLQ)).messages
        except BusError as exc:
            raise _unavailable(exc) from None
        answer = DeadLetterList(
            dead_letters=shown, total=stored, more=more, identity=self.ctx.settings.platform.nats_user
        )
        return json_response(answer)

    async def redrive(self, request: web.Request) -> web.Response:
        """Republish dead letters to their original subject and delete them from NEXUS_DLQ: the one at
        ``seq``, every one of ``consumer``, or all. One that cannot be sent back stays, and the
        answer says why (for ``seq``: 409)."""
        body = await read_json(request, RedriveBody)
        consumer = _consumer(body.consumer)
        check = publish_check(self.ctx)
        bus = self.ctx.service.bus
        try:
            if body.seq is None:
                count, problems = await redrive(bus, consumer, may_publish=check)
                return json_response(RedriveAnswer(redriven=count, problems=problems))
            message = await find(bus, body.seq)
            if message is None or (consumer is not None and describe(message).consumer != consumer):
                raise HTTPError(404, f"no dead letter at seq {body.seq} (redriven or removed already?)")
            why = not_redrivable(message, check)
            if why is not None:
                raise HTTPError(409, f"seq {body.seq}: {why}")
            refused = await redrive_one(bus, message, check)
        except BusError as exc:
            raise _unavailable(exc) from None
        problems = [f"seq {body.seq}: {refused}"] if refused else []
        return json_response(RedriveAnswer(redriven=0 if refused else 1, problems=problems))


def install(ctx: KamContext) -> None:
    """Add the ledger and dead-letter routes to KAM (admins only)."""
    routes = OperationRoutes(ctx)
    ctx.route(
        "GET",
        "/costs",
        summary="The cost ledger across clients, with totals per client and per template (admin)",
        response=LedgerAnswer,
        tags=["costs"],
        auth="client",
        scope=ADMIN_SCOPE,
        query={
            "client_id": "one client's entries",
            "template": "one template's entries (its id or name)",
            "request_id": "one request's entries",
            "kind": "run, tokens or stage",
            "from": "Start (inclusive): RFC 3339 date-time or YYYY-MM-DD",
            "to": "End (exclusive): RFC 3339 date-time, or YYYY-MM-DD for the end of that day",
            "limit": f"entries per page, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})",
            "cursor": "next_cursor of the previous page",
        },
        responses={
            400: "A filter, bound, limit or cursor is not understood (the message names it)",
            403: "Admins only",
        },
    )(routes.costs)
    ctx.route(
        "GET",
        "/dead-letters",
        summary="The dead letters (stream NEXUS_DLQ) with their consumer and reason (admin)",
        response=DeadLetterList,
        tags=["operations"],
        auth="client",
        scope=ADMIN_SCOPE,
        query={
            "consumer": "one consumer's dead letters",
            "limit": f"dead letters shown, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})",
        },
        responses={
            400: "The consumer or limit is not valid",
            403: "Not an admin",
            503: "NATS does not answer",
        },
    )(routes.list_dead_letters)
    ctx.route(
        "POST",
        "/dead-letters/redrive",
        summary="Send dead letters back to their original subject: one (seq), a consumer's, or all (admin)",
        request=RedriveBody,
        response=RedriveAnswer,
        tags=["operations"],
        auth="client",
        scope=ADMIN_SCOPE,
        responses={
            400: "The body is not understood",
            403: "Not an admin",
            404: "No dead letter at that seq",
            409: "That dead letter cannot be redriven by KAM (the message says why and what to do)",
            503: "NATS does not answer",
        },
    )(routes.redrive)
