"""KAM's fold follows only the types it needs, and read-your-writes holds whatever else the log holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from inprocess import build

from nexus.proto import new_event
from nexus.proto.events.kam import KamClientCreated
from nexus.services.kam.delivery import KAM_CONTEXT
from nexus.services.kam.state import ACCOUNTS_STREAM, KAM_TYPES


async def test_kam_reads_its_own_types_and_the_workflow_ends_only(tmp_path: Path) -> None:
    kam = await build("kam", tmp_path)
    ctx = kam.app[KAM_CONTEXT]
    followed = ctx.followed_types
    assert followed is not None
    assert set(KAM_TYPES) <= set(followed)
    assert "nexus.workflow.execution.completed" in followed
    assert "nexus.workflow.step.completed" not in followed


async def test_caught_up_to_a_position_kam_does_not_follow_returns_at_once(tmp_path: Path) -> None:
    kam = await build("kam", tmp_path)
    await kam.start()
    ctx = kam.app[KAM_CONTEXT]
    seen: list[str] = []
    ctx.on_event(lambda event: seen.append(event.type))
    try:
        created = KamClientCreated(client_id="acme", name="Acme")
        await kam.log.append(ACCOUNTS_STREAM, [new_event("nexus.kam.client.created", created, source="test")])
        # Another service's events after it: a filtered tail never hands these over, so waiting
        # for the fold to reach the head would wait for ever.
        [foreign] = await kam.log.append("elsewhere", [new_event("nexus.test.noise", {"n": 1}, source="test")])
        await asyncio.wait_for(ctx.caught_up(foreign.position or 0), 2)
        assert "acme" in ctx.state.clients
        await asyncio.sleep(0.2)  # the tail hands the client's event over too: followers see it once
        assert seen.count("nexus.kam.client.created") == 1
        assert "nexus.test.noise" not in seen
    finally:
        await kam.stop()
