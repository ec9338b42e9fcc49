"""``KeyedWork``: a key asked for often is worked on once, again if asked while running, retried after failing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nexus.runtime import KeyedWork


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - the worker tasks give no event to wait for
            await asyncio.sleep(0.005)


async def test_keys_are_coalesced_rerun_when_asked_while_running_and_retried() -> None:
    calls: list[str] = []
    release = asyncio.Event()
    fail_once = {"bad"}

    async def handle(key: str) -> None:
        calls.append(key)
        if key == "slow" and calls.count("slow") == 1:
            await release.wait()
        if key in fail_once:
            fail_once.discard(key)
            raise RuntimeError("the log went away")

    work = KeyedWork(handle, name="test", what="handling", workers=2, retry_seconds=(0.01,))
    runner = asyncio.create_task(work.run())
    try:
        for _ in range(5):
            work.check("a")  # five asks, queued once
        work.check("slow")
        work.check("bad")
        await _until(lambda: calls.count("bad") == 2 and "a" in calls and "slow" in calls)
        work.check("slow")  # asked while it runs: once more after
        release.set()
        await _until(lambda: calls.count("slow") == 2)
        await asyncio.sleep(0.05)
        assert calls.count("a") == 1
        assert calls.count("bad") == 2  # failed, then retried once
        assert calls.count("slow") == 2
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
