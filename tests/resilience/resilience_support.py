"""Helpers of the resilience tests: free ports, deadlines, HTTP probes and a dead-letter watcher."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

WAIT = 15.0
"""Seconds any single wait may take before the test fails (nothing hangs)."""


async def within(awaitable: Awaitable[Any], what: str, seconds: float = WAIT) -> Any:
    """``await`` with a deadline; a timeout fails the test naming what did not happen."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds:g} s") from None


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status, await resp.json()


async def until_status(
    session: aiohttp.ClientSession, url: str, status: int, *, seconds: float = WAIT, interval: float = 0.05
) -> Any:
    """Poll ``url`` until it answers ``status``; return that answer's body.

    Readiness has no event to await from outside the service: polling it is what an
    orchestrator does too.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    last: tuple[int, Any] | None = None
    while True:
        last = await get_json(session, url)
        if last[0] == status:
            return last[1]
        if loop.time() > deadline:
            raise AssertionError(f"{url} did not answer {status} within {seconds:g} s; last answer {last}")
        await asyncio.sleep(interval)


class DeadLetters:
    """A core subscription to ``nexus.dlq.>``: every dead letter the consumers store, as it is stored."""

    def __init__(self) -> None:
        self.letters: list[tuple[str, dict[str, str], bytes]] = []
        self._arrived = asyncio.Condition()

    async def subscribe(self, nc: NatsClient) -> None:
        async def on_msg(msg: Msg) -> None:
            async with self._arrived:
                self.letters.append((msg.subject, dict(msg.headers or {}), msg.data))
                self._arrived.notify_all()

        await nc.subscribe("nexus.dlq.>", cb=on_msg)
        await nc.flush()

    async def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], what: str, seconds: float = WAIT
    ) -> tuple[str, dict[str, str], bytes]:
        """The first dead letter whose headers satisfy ``predicate``."""

        async def find() -> tuple[str, dict[str, str], bytes]:
            async with self._arrived:
                while True:
                    for letter in self.letters:
                        if predicate(letter[1]):
                            return letter
                    await self._arrived.wait()

        return await within(find(), what, seconds)


def cloud_event(event_type: str, data: Any, *, event_id: str, source: str = "nexus/resilience-tests") -> bytes:
    """A CloudEvent in structured JSON mode, as a producer writes it."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": event_type,
            "time": "2026-11-22T10:00:00Z",
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()
