"""A standby relay whose lease attempt failed once is healthy again once the lease answers.

Found by the replicas kill test (tests/resilience/test_replicas_killed.py): two relay processes
start together on a fresh JetStream cluster; one's first attempt at the lease fails (the lease
bucket's stream has no leader yet), the other takes the lease, and the first, a standby from
then on, answered /readyz 503 for good: only relaying counted as progress, so a replica that
stands by never cleared its failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nexus.bus import BusUnavailableError
from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.relay import Relay

WAIT = 10.0


async def test_a_standby_whose_lease_attempt_failed_is_healthy_once_the_lease_answers() -> None:
    bus = MemoryBus()
    await bus.ensure_streams()
    log = MemoryEventLog()
    first = Relay(log, bus, owner="first", lease_ttl=0.6)
    second = Relay(log, bus, owner="second", lease_ttl=0.6)
    await first.start()
    await asyncio.wait_for(first.leading.wait(), WAIT)
    await second.start()
    assert second._lease is not None
    lease = second._lease
    answer = lease.try_acquire
    failures = 1

    async def flaky() -> bool:
        # The first attempt fails as an unavailable bucket does; the next ones ask the bucket.
        nonlocal failures
        if failures:
            failures -= 1
            raise BusUnavailableError("bucket nexus_relay_lease: no stream response")
        return await answer()

    lease.try_acquire = flaky  # type: ignore[method-assign]
    try:

        async def until(condition: Callable[[], bool]) -> None:
            # Health is a property read by /readyz, with no event to await: poll it as a probe does.
            while True:
                if condition():
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(until(lambda: not second.healthy), WAIT)
        # The lease answers again (held by the first): the standby is healthy, not leading.
        await asyncio.wait_for(until(lambda: second.healthy), WAIT)
        assert not second.is_leader and second.last_error is None
        assert first.healthy and first.is_leader
    finally:
        await second.stop()
        await first.stop()
        await bus.close()
        await log.close()
