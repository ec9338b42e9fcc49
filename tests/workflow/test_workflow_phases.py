"""Seed 001's phases run out of the box: the bundled phase workflows do their work on the
platform's own granulator (core), with no external service configured. As with ``make run``: NATS,
the outbox relay feeding the triggers, the granulator and the workflow service over one log.
Phase 1 chains to 2, 3 and 4; phases 5, 6 and 7 wait for their own triggers."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from nexus.bus.jetstream import JetStreamBus
from nexus.relay import Relay
from nexus.services.workflow.phases import phase_workflows


@pytest.mark.nats  # nats_server first: it stops after the services
async def test_the_phases_run_on_the_platform_services_by_default(nats_server, granulator, workflow_service, stub):
    bus = await JetStreamBus.connect(nats_server, name="phases-workflow")
    svc = await workflow_service(
        await granulator.open_log(), modules=True, bus=bus, NEXUS_GRANULATOR_PORT=str(granulator.port)
    )
    # The relay shares the workflow service's connection to the log, so it hears each append at
    # once (another connection would find it at its next poll of the file).
    relay_bus = await JetStreamBus.connect(nats_server, name="phases-relay")
    relay = Relay(svc.service.log, relay_bus, lease=False)
    await relay.start()
    try:
        await _run_phases(svc, stub)
    finally:
        await relay.stop()
        await relay_bus.close()


async def _run_phases(svc, stub) -> None:
    assert "integrations" not in svc.ctx.settings.services
    registered = {w.id for w in svc.ctx.registry.list_workflows()}
    assert {f"phase_{n}" for n in range(1, 8)} <= registered
    assert all([s.service for s in svc.ctx.registry.get_workflow(f"phase_{n}").steps] == ["core"] for n in range(1, 8))
    async with aiohttp.ClientSession(headers={"x-service-key": svc.key}) as http:
        async with http.post(
            f"{svc.url}/api/v1/workflow/phase/1", json={"user_id": "u-1", "sync_id": "s-1", "shop": "north"}
        ) as r:
            assert r.status == 202, await r.text()

        async def all_done() -> list:
            while True:
                done = [s for s in svc.ctx.engine.list(status="COMPLETED") if s.workflow_id.startswith("phase_")]
                if len(done) == 4:
                    return done
                await asyncio.sleep(0.05)

        try:
            done = await asyncio.wait_for(all_done(), 30)
        except TimeoutError:
            raise AssertionError([(s.workflow_id, s.status, s.error) for s in svc.ctx.engine.list()]) from None
        # Phase 7 on its own trigger (a payout), over the same platform services.
        payout = {"user_id": "u-1", "sync_id": "s-1", "claim_id": "c-1", "amount": "50.00", "shop": "north"}
        async with http.post(f"{svc.url}/api/v1/workflow/phase/7", json=payout) as r:
            assert r.status == 202, await r.text()

        async def phase_7_done() -> None:
            for _ in range(600):  # 30 s
                if [s for s in svc.ctx.engine.list(status="COMPLETED") if s.workflow_id == "phase_7"]:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("phase 7 did not complete within 30 s")

        await phase_7_done()
        async with http.get(f"{svc.url}/api/v1/workflow/phases/u-1/audit") as r:
            audit = await r.json()
    by_phase = {s.output["phase"]: s.output for s in done}
    assert sorted(by_phase) == [1, 2, 3, 4]
    for n, output in by_phase.items():
        assert output["user_id"] == "u-1" and output["sync_id"] == "s-1" and output["metadata"] == {"shop": "north"}
        assert output["report"].startswith(f"Phase {n} (")
    assert sorted(e["phase"] for e in audit["executions"]) == [1, 2, 3, 4, 7]
    # Nothing was sent to any other service.
    assert stub.log == []


def test_the_integrations_option_adds_a_mirror_step():
    plain = dict(phase_workflows())
    mirrored = dict(phase_workflows(mirror=True))
    assert sorted(plain) == [f"phase-{n}.yaml" for n in range(1, 8)]
    for name, document in mirrored.items():
        n = int(name[6])
        assert [s["id"] for s in document["steps"]] == ["execute", "mirror"]
        mirror = document["steps"][1]
        assert mirror["service"] == "integrations" and mirror["endpoint"].startswith(f"/phases/{n}/")
        assert document["output"]["integration"] == "$.steps.mirror.output"
        assert [s["id"] for s in plain[name]["steps"]] == ["execute"]
