"""KAM's costs: a template's cost model, the ledger entries of one run, and the client's cost report.

Every cost is a ``nexus.kam.cost.recorded`` event in stream ``kam-ledger`` (one entry per cost
kind of a run: ``run``, ``tokens``, ``stage``, each with its quantity), so the report below is a
sum over ``KamState.ledger`` and equals a fold of the ledger rebuilt by replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import msgspec
from aiohttp import web

from nexus.proto import parse_rfc3339
from nexus.runtime import HTTPError, Owned, json_response
from nexus.services.kam.context import KamContext
from nexus.services.kam.state import LedgerEntry

__all__ = [
    "CostGroup",
    "CostModel",
    "CostReport",
    "Usage",
    "install",
    "price",
    "report",
    "round_amount",
]

AMOUNT_DIGITS = 6
"""Amounts are rounded to a millionth of the currency unit (entries and sums alike)."""

GROUPS = ("day", "template")


def round_amount(value: float) -> float:
    """An amount as the ledger keeps it."""
    return round(value, AMOUNT_DIGITS)


@dataclass(frozen=True)
class Usage:
    """What one execution used: the quantities the cost model prices."""

    stages: int
    """Steps completed (compensations not counted)."""
    tokens: int
    """Tokens used, reported by the steps or estimated."""


@dataclass(frozen=True)
class CostModel:
    """A template's ``cost`` section: ``{per_run, per_1k_tokens, per_stage, currency}``."""

    per_run: float = 0.0
    per_1k_tokens: float = 0.0
    per_stage: float = 0.0
    currency: str = "USD"

    @classmethod
    def of(cls, template: Mapping[str, Any] | None) -> CostModel:
        """The cost model of a template document (zero for a part it leaves out)."""
        cost = (template or {}).get("cost")
        if not isinstance(cost, Mapping):
            return cls()

        def number(name: str) -> float:
            value = cost.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return 0.0
            return max(float(value), 0.0)

        currency = cost.get("currency")
        return cls(
            per_run=number("per_run"),
            per_1k_tokens=number("per_1k_tokens"),
            per_stage=number("per_stage"),
            currency=currency if isinstance(currency, str) and currency else "USD",
        )


def price(model: CostModel, usage: Usage) -> list[tuple[str, float, float]]:
    """The ledger entries of one run: ``(kind, quantity, amount)`` for ``run``, ``tokens``, ``stage``.

    A run always costs its ``per_run`` (quantity 1); tokens and stages appear when there were any.
    """
    entries = [("run", 1.0, round_amount(model.per_run))]
    if usage.tokens > 0:
        entries.append(("tokens", float(usage.tokens), round_amount(model.per_1k_tokens * usage.tokens / 1000)))
    if usage.stages > 0:
        entries.append(("stage", float(usage.stages), round_amount(model.per_stage * usage.stages)))
    return entries


def total(amounts: Iterable[float]) -> float:
    """The sum of amounts, exactly rounded (``math.fsum``), as the report and the metrics give it."""
    return round_amount(math.fsum(amounts))


# -- the report -------------------------------------------------------------------------------


class CostGroup(msgspec.Struct, frozen=True, kw_only=True):
    """The costs of one day or one template."""

    key: str
    """``YYYY-MM-DD`` (UTC) for ``group=day``; the template's name for ``group=template``."""
    amount: float
    entries: int
    """How many ledger entries the amount sums."""
    template_id: str | None = None
    """For ``group=template``: the template's id."""


class CostReport(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/clients/{client_id}/costs``."""

    client_id: str
    currency: str
    total: float
    groups: list[CostGroup]
    group: str
    """``day`` or ``template``."""
    entries: int
    other_currencies: dict[str, float] = {}
    """Entries in another currency than the client's are summed here, not in ``total`` or ``groups``."""
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None


def _bound(name: str, text: str | None, *, upper: bool) -> datetime | None:
    """A query bound: an RFC 3339 instant, or a date (``from``: its start; ``to``: the end of that day)."""
    if text is None or text == "":
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1) if upper else start
        return parse_rfc3339(text)
    except (ValueError, IndexError):
        raise HTTPError(
            400, f"{name}={text!r} is neither an RFC 3339 date-time nor a date (YYYY-MM-DD)", error="invalid_query"
        ) from None


def report(
    ledger: Iterable[LedgerEntry],
    client_id: str,
    currency: str,
    *,
    group: str = "day",
    start: datetime | None = None,
    end: datetime | None = None,
    template_names: Mapping[str, str] | None = None,
) -> CostReport:
    """Sum ``client_id``'s entries with ``start <= at < end``, grouped by day or template.

    A pure function of the ledger, so a fold rebuilt by replay gives the same report.
    """
    names = template_names or {}
    buckets: dict[str, list[float]] = {}
    template_of: dict[str, str | None] = {}
    others: dict[str, list[float]] = {}
    count = 0
    for entry in ledger:
        if entry.client_id != client_id:
            continue
        at = parse_rfc3339(entry.at) if entry.at else None
        if (start is not None or end is not None) and at is None:
            continue
        if start is not None and at is not None and at < start:
            continue
        if end is not None and at is not None and at >= end:
            continue
        if entry.currency != currency:
            others.setdefault(entry.currency, []).append(entry.amount)
            continue
        count += 1
        if group == "day":
            key = at.astimezone(UTC).date().isoformat() if at is not None else "unknown"
            template_of[key] = None
        else:
            template_id = entry.template_id or ""
            key = names.get(template_id) or template_id or "none"
            template_of[key] = template_id or None
        buckets.setdefault(key, []).append(entry.amount)
    groups = [
        CostGroup(key=key, amount=total(amounts), entries=len(amounts), template_id=template_of[key])
        for key, amounts in sorted(buckets.items())
    ]
    return CostReport(
        client_id=client_id,
        currency=currency,
        total=total(a for amounts in buckets.values() for a in amounts),
        groups=groups,
        group=group,
        entries=count,
        other_currencies={cur: total(amounts) for cur, amounts in sorted(others.items())},
        from_=start.isoformat().replace("+00:00", "Z") if start is not None else None,
        to=end.isoformat().replace("+00:00", "Z") if end is not None else None,
    )


class CostRoutes:
    """The cost report route's handler."""

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx

    async def costs(self, request: web.Request) -> web.Response:
        """A client's costs from its ledger, summed per day (UTC) or per template, between
        ``from`` (inclusive) and ``to`` (exclusive; a date means the end of that day). Entries in
        a currency other than the client's are summed apart, in ``other_currencies``."""
        client_id = request.match_info["client_id"]
        query = request.query
        group = query.get("group", "day") or "day"
        if group not in GROUPS:
            raise HTTPError(400, f"group={group!r}: use 'day' or 'template'", error="invalid_query")
        start = _bound("from", query.get("from"), upper=False)
        end = _bound("to", query.get("to"), upper=True)
        if start is not None and end is not None and start > end:
            raise HTTPError(400, "from is after to", error="invalid_query")
        state = self.ctx.state
        client = state.clients.get(client_id)
        currency = client.currency if client is not None else "USD"
        names = {
            template_id: str(document.get("name") or template_id) for template_id, document in state.templates.items()
        }
        answer = report(state.ledger, client_id, currency, group=group, start=start, end=end, template_names=names)
        return json_response(answer)


def install(ctx: KamContext) -> None:
    """Add the cost report to KAM."""
    routes = CostRoutes(ctx)
    ctx.route(
        "GET",
        "/clients/{client_id}/costs",
        summary="A client's costs from its ledger, per day or per template",
        response=CostReport,
        responses={400: "A bound or the grouping is not understood (the message names it)", 404: "No such client"},
        tags=["costs"],
        auth="client",
        owned=Owned("client", "client_id", ctx.state.tenant_of_client),
        scope="costs:read",
        query={
            "from": "Start (inclusive): RFC 3339 date-time or YYYY-MM-DD",
            "to": "End (exclusive): RFC 3339 date-time, or YYYY-MM-DD for the end of that day",
            "group": "day (default) or template",
        },
    )(routes.costs)
