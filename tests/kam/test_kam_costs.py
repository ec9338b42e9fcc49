"""A client's costs: ledger entries in the log, summed per day or per template, equal to a replayed fold.

The entries are appended as ``nexus.kam.cost.recorded`` events (as the execution watcher writes
them) on several days, for two templates and two clients; the report is asked through KAM's
route and compared with a fold of the log built from nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from factory_harness import ALPHA, BETA, Factory, factory, template

from nexus.proto.events.kam import KamCostRecorded
from nexus.services.kam.costs import CostModel, Usage, price, report
from nexus.services.kam.state import COST_RECORDED, KAM_TYPES, LEDGER_STREAM, KamState, LedgerEntry

ENTRIES = [
    # (client, template, kind, quantity, amount, at)
    (ALPHA, "report", "run", 1, 0.5, "2026-03-01T09:00:00Z"),
    (ALPHA, "report", "tokens", 1500, 0.03, "2026-03-01T09:00:00Z"),
    (ALPHA, "brief", "run", 1, 0.2, "2026-03-01T23:59:59.999Z"),
    (ALPHA, "brief", "stage", 3, 0.3, "2026-03-02T00:00:00Z"),
    (ALPHA, "report", "run", 1, 0.5, "2026-03-04T12:30:00+02:00"),
    (BETA, "report", "run", 1, 0.5, "2026-03-01T10:00:00Z"),
]


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Factory]:
    async for built in factory(tmp_path, with_workflow=False):
        await built.add_template(template("brief", "kam_report"))
        for n, (client, template_id, kind, quantity, amount, at) in enumerate(ENTRIES):
            entry = KamCostRecorded(
                entry_id=f"e{n}",
                client_id=client,
                amount=amount,
                kind=kind,
                quantity=quantity,
                request_id=f"r{n}",
                execution_id=f"x{n}",
                template_id=template_id,
                at=at,
            )
            await built.append(LEDGER_STREAM, COST_RECORDED, entry, tenant=client)
        yield built


async def test_costs_per_day_and_per_template(platform: Factory) -> None:
    status, by_day = await platform.call("GET", f"/api/clients/{ALPHA}/costs", ALPHA)
    assert status == 200, by_day
    assert by_day["client_id"] == ALPHA and by_day["currency"] == "USD" and by_day["group"] == "day"
    assert by_day["total"] == pytest.approx(1.53) and by_day["entries"] == 5
    assert [(g["key"], g["amount"], g["entries"]) for g in by_day["groups"]] == [
        ("2026-03-01", pytest.approx(0.73), 3),
        ("2026-03-02", pytest.approx(0.3), 1),
        ("2026-03-04", pytest.approx(0.5), 1),
    ]
    status, by_template = await platform.call("GET", f"/api/kam/clients/{ALPHA}/costs?group=template", ALPHA)
    assert status == 200
    assert [(g["key"], g["template_id"], g["amount"]) for g in by_template["groups"]] == [
        ("brief_pipeline", "brief", pytest.approx(0.5)),
        ("report_pipeline", "report", pytest.approx(1.03)),
    ]


async def test_bounds_are_dates_or_instants_and_bad_ones_are_named(platform: Factory) -> None:
    # A date as ``to`` means the end of that day; an instant is exact (``to`` exclusive).
    status, body = await platform.call("GET", f"/api/clients/{ALPHA}/costs?from=2026-03-01&to=2026-03-01", ALPHA)
    assert status == 200 and body["total"] == pytest.approx(0.73) and body["entries"] == 3
    assert body["from"] == "2026-03-01T00:00:00Z" and body["to"] == "2026-03-02T00:00:00Z"
    query = "from=2026-03-01T09:00:01Z&to=2026-03-04T10:30:00Z"
    status, body = await platform.call("GET", f"/api/clients/{ALPHA}/costs?{query}", ALPHA)
    assert status == 200 and body["total"] == pytest.approx(0.5) and body["entries"] == 2
    for query, named in (("from=yesterday", "from="), ("to=2026-13-01", "to="), ("group=week", "group=")):
        status, body = await platform.call("GET", f"/api/clients/{ALPHA}/costs?{query}", ALPHA)
        assert status == 400 and named in body["message"], (query, body)
    status, body = await platform.call("GET", f"/api/clients/{ALPHA}/costs?from=2026-03-05&to=2026-03-01", ALPHA)
    assert status == 400 and "after" in body["message"]


async def test_only_the_client_and_admins_see_its_costs(platform: Factory) -> None:
    status, body = await platform.call("GET", f"/api/clients/{ALPHA}/costs", BETA)
    assert status == 404 and "0.5" not in str(body)
    status, body = await platform.call("GET", "/api/clients/nobody/costs", "admin")
    assert status == 404
    status, body = await platform.call("GET", f"/api/clients/{BETA}/costs", "admin")
    assert status == 200 and body["total"] == pytest.approx(0.5)


async def test_the_report_equals_a_fold_of_the_ledger_after_replay(platform: Factory) -> None:
    # A fresh fold of the whole log, as `nexus replay` builds it.
    replayed = KamState()
    async for batch in platform.log.iter_all(1, types=KAM_TYPES):
        for event in batch:
            replayed.apply(event)
    names = {t: str(d.get("name")) for t, d in replayed.templates.items()}
    for client in (ALPHA, BETA):
        for group in ("day", "template"):
            status, served = await platform.call("GET", f"/api/clients/{client}/costs?group={group}", "admin")
            assert status == 200
            folded = report(replayed.ledger, client, "USD", group=group, template_names=names)
            assert served["total"] == folded.total and served["entries"] == folded.entries
            assert [(g["key"], g["amount"]) for g in served["groups"]] == [(g.key, g.amount) for g in folded.groups]
    assert len(replayed.ledger) == len(ENTRIES) == len(platform.ctx().state.ledger)


def test_a_run_is_priced_per_run_tokens_and_stages() -> None:
    model = CostModel.of({"cost": {"per_run": 0.5, "per_1k_tokens": 0.02, "per_stage": 0.1, "currency": "EUR"}})
    assert model.currency == "EUR"
    assert price(model, Usage(stages=3, tokens=2500)) == [
        ("run", 1.0, 0.5),
        ("tokens", 2500.0, 0.05),
        ("stage", 3.0, 0.3),
    ]
    assert price(model, Usage(stages=0, tokens=0)) == [("run", 1.0, 0.5)]
    # A template without a cost model, or with nonsense in it, costs nothing rather than failing.
    assert CostModel.of({}) == CostModel()
    assert CostModel.of({"cost": {"per_run": "lots", "per_stage": -1, "per_1k_tokens": True}}) == CostModel()


def test_other_currencies_are_summed_apart() -> None:
    ledger = [
        LedgerEntry("a", ALPHA, 1.0, "USD", "run", 1, None, None, "t", "2026-01-01T00:00:00Z"),
        LedgerEntry("b", ALPHA, 2.0, "EUR", "run", 1, None, None, "t", "2026-01-01T00:00:00Z"),
    ]
    answer = report(ledger, ALPHA, "USD")
    assert answer.total == 1.0 and answer.other_currencies == {"EUR": 2.0}
