"""The relay needs only the bus port: it relays, checkpoints and elects a leader on the memory bus too."""

from __future__ import annotations

import asyncio

from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import STREAM_EVT, new_event
from nexus.relay import LEASE_BUCKET, RELAY_BUCKET, Relay

WAIT = 10.0


async def test_the_relay_runs_on_the_memory_bus_with_its_lease_and_checkpoint() -> None:
    bus = MemoryBus()
    await bus.ensure_streams()
    log = MemoryEventLog()
    for n in range(20):
        await log.append(f"thing-{n % 3}", [new_event("nexus.test.thing.changed", {"n": n}, source="nexus/test")])
    first = Relay(log, bus, owner="first", lease_ttl=0.6)
    second = Relay(log, bus, owner="second", lease_ttl=0.6)
    await first.start()
    await asyncio.wait_for(first.leading.wait(), WAIT)
    await second.start()
    await asyncio.wait_for(first.wait_relayed(20), WAIT)
    assert not second.is_leader
    await first.stop()
    # The lease was released: the standby takes over and relays what comes next, once.
    await asyncio.wait_for(second.leading.wait(), WAIT)
    await log.append("thing-0", [new_event("nexus.test.thing.changed", {"n": 20}, source="nexus/test")])
    await asyncio.wait_for(second.wait_relayed(21), WAIT)
    await second.stop()
    state = await bus.stream_state(STREAM_EVT)
    assert state.messages == 21
    last = await bus.get_message(STREAM_EVT, 21)
    assert last is not None and last.headers["Nexus-Position"] == "21"
    checkpoint = await (await bus.key_value(RELAY_BUCKET)).get("checkpoint")
    assert checkpoint is not None and checkpoint.value == b"21"
    assert await (await bus.key_value(LEASE_BUCKET)).get("leader") is None
    await bus.close()
    await log.close()
