"""Seed 002's storage references as deliverables: an orchestrator reports ``storage_ref`` as
``r2://bucket/path`` (or ``kv://``), read in the request's client's namespace and served to it only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from factory_harness import ALPHA, BETA, Factory, factory, template

from nexus.raw import RefPolicy, put_ref


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Factory]:
    async for built in factory(tmp_path):
        yield built


async def test_a_tier_reference_is_a_deliverable_of_its_client(platform: Factory) -> None:
    await platform.add_template(template("held", "kam_held"))
    request_id = await platform.add_request(ALPHA, "held")
    _, started = await platform.call("POST", f"/api/requests/{request_id}/execute", "admin", {})
    execution_id = started["execution_id"]
    path = f"/api/worker-sessions/{execution_id}/complete"
    report = {"title": "Final report", "body": "x" * 4000}
    # The orchestrator stored the report for the client (tenant alpha) as the seed's r2:// reference.
    # (Its kv limit is 2 KB here, so the 4 KB report is an r2:// one; placement is the same policy's.)
    small_kv = RefPolicy(kv_max=2048)
    ref = await put_ref(
        platform.raw, report, namespace="reports", name="final_123.json", tenant="alpha", policy=small_kv
    )
    assert ref == "r2://reports/final_123.json"
    body = {
        "execution_id": execution_id,
        "status": "completed",
        "deliverables": [{"type": "report", "storage_ref": ref, "metadata": {}}],
    }
    # A reference naming nothing in alpha's namespace (beta's, or none) is refused, naming the field.
    missing = {**body, "deliverables": [{"type": "report", "storage_ref": "r2://reports/beta.json", "metadata": {}}]}
    status, refused = await platform.call("POST", path, "worker", missing)
    assert status == 400 and "deliverables[0].storage_ref" in refused["message"]

    status, done = await platform.call("POST", path, "worker", body)
    assert status == 200, done
    [deliverable_id] = done["deliverable_ids"]
    async with platform.http.get(  # type: ignore[union-attr]
        platform.url() + f"/api/deliverables/{deliverable_id}", headers=platform.headers[ALPHA]
    ) as response:
        assert response.status == 200 and await response.json() == report
    status, _ = await platform.call("GET", f"/api/deliverables/{deliverable_id}", BETA)
    assert status == 404
    platform.stub.release.set()
