"""KAM's metrics: requests by status and the ledger's costs, read from the fold when /metrics is
scraped (the same figures after a restart, and on every replica)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from factory_harness import ALPHA, BETA, Factory, factory
from prometheus_client.parser import text_string_to_metric_families

from nexus.proto.events.kam import KamCostRecorded
from nexus.services.kam.state import COST_RECORDED, LEDGER_STREAM


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Factory]:
    async for built in factory(tmp_path, with_workflow=False):
        yield built


async def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("nexus_kam_")
    }


async def _cost(platform: Factory, n: int, client: str, kind: str, amount: float) -> None:
    entry = KamCostRecorded(
        entry_id=f"metrics-{n}",
        client_id=client,
        amount=amount,
        kind=kind,
        quantity=1,
        request_id=None,
        execution_id=None,
        template_id=None,
        at="2026-03-01T09:00:00Z",
    )
    await platform.append(LEDGER_STREAM, COST_RECORDED, entry, tenant=client)


async def test_requests_by_status_and_costs_on_metrics_survive_a_restart(platform: Factory) -> None:
    before = await _metrics(platform.url())
    # Every status has a series from the start (0 on a fresh platform).
    for status in ("pending", "template_assigned", "executing", "completed", "failed"):
        assert before[("nexus_kam_requests", (("status", status),))] == 0
    await platform.add_request(ALPHA, None)
    await platform.add_request(BETA, None)
    await platform.add_request(ALPHA, "some_template")
    await _cost(platform, 1, ALPHA, "run", 0.5)
    await _cost(platform, 2, BETA, "run", 0.25)
    await _cost(platform, 3, ALPHA, "tokens", 0.125)

    after = await _metrics(platform.url())
    assert after[("nexus_kam_requests", (("status", "pending"),))] == 2
    assert after[("nexus_kam_requests", (("status", "template_assigned"),))] == 1
    assert after[("nexus_kam_costs_total", (("currency", "USD"), ("kind", "run")))] == 0.75
    assert after[("nexus_kam_costs_total", (("currency", "USD"), ("kind", "tokens")))] == 0.125
    assert after[("nexus_kam_cost_entries_total", (("kind", "run"),))] == 2

    # A second replica, and then the first one restarted: the same figures, not counted twice.
    second = await platform.start_kam()
    await platform.stop_kam(platform.kams[0])
    assert await _metrics(platform.url(second)) == after
    third = await platform.start_kam()
    assert await _metrics(platform.url(third)) == after
