"""Live updates in the browser: Server-Sent Events over the session cookie, resumed after the
connection drops with ``Last-Event-ID``, so no update is lost and none arrives twice.

The page follows KAM's notification stream with the console's own ``live.js``. KAM is killed
(``kill -9``; ``nexus up`` starts it again), so the open stream breaks; the browser's attempts to
reconnect are held back (Playwright's request routing) until an update has happened that the page
did not see; then they go through, and the browser asks with ``Last-Event-ID`` by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import aiohttp
import pytest
from conftest import Console
from processes import descendants

from nexus.client import KamClient

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

FOLLOW = """
async () => {
  const { follow } = await import("/console/live.js");
  window.updates = [];
  window.states = [];
  window.handle = follow("/api/notifications/stream", {
    types: ["nexus.kam.request.created", "nexus.kam.request.updated"],
    onUpdate: (type, data, id) => window.updates.push({ type, id, request: data.request_id }),
    onState: (state) => window.states.push(state),
  });
}
"""
CREATE = """
async (title) => {
  const { post, kam } = await import("/console/api.js");
  return (await post(kam("/requests"), { title, description: "Created by the live-update test." })).request_id;
}
"""


async def _until_ready(url: str, seconds: float = 40.0) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(seconds * 10)):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/readyz") as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"KAM not ready again within {seconds} s")


async def _wait_for(page: Any, expression: str, seconds: float = 20.0) -> Any:
    for _ in range(int(seconds * 10)):
        value = await page.evaluate(expression)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true within {seconds} s: {expression}")


async def test_an_update_missed_while_the_connection_was_down_arrives_once_after_it_returns(
    console: Console, pages: list[Any]
) -> None:
    username, password = await console.client_user("livetest")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    await page.evaluate(FOLLOW)
    await _wait_for(page, "window.states.includes('open')")

    first = await page.evaluate(CREATE, "before the cut")
    await _wait_for(page, f"window.updates.some(u => u.request === {first!r})")

    # Hold every new connection to the stream; kill KAM, which breaks the open one.
    release = asyncio.Event()
    resumed: list[str] = []

    async def hold(route: Any) -> None:
        await release.wait()
        resumed.append(route.request.url)
        await route.continue_()

    await page.route("**/api/notifications/stream", hold)
    kam = [pid for pid, line in descendants(console.up.process.pid).items() if "nexus.services.kam" in line]
    assert len(kam) == 1, kam
    os.kill(kam[0], signal.SIGKILL)
    await _wait_for(page, "window.states.includes('reconnecting')")
    await _until_ready(console.url)
    # Meanwhile the request is created by another of the client's sessions (not this browser).
    other = KamClient(console.url)
    try:
        await other.login(username, password)
        missed = (await other.create_request("while offline", "This one happens while the stream is down."))[
            "request_id"
        ]
    finally:
        await other.close()
    release.set()

    # The browser reconnects with Last-Event-ID and gets the missed update, then live ones.
    await _wait_for(page, f"window.updates.some(u => u.request === {missed!r})", 30)
    after = await page.evaluate(CREATE, "after the cut")
    await _wait_for(page, f"window.updates.some(u => u.request === {after!r})")
    # The missed request was created after KAM was up again and before the browser could
    # reconnect: a stream opened without Last-Event-ID starts with what happens after it, so
    # its arrival shows the browser resumed from the last id it had. (Playwright's view of a
    # routed request's headers leaves out Last-Event-ID, which Chromium adds itself.)
    assert resumed, "the browser never tried to reconnect"
    states = await page.evaluate("window.states")
    assert states[0] == "open" and "reconnecting" in states and states[-1] == "open", states
    updates = await page.evaluate("window.updates")
    ids = [u["id"] for u in updates]
    assert len(ids) == len(set(ids)), f"an update arrived twice: {updates}"
    created = [u["request"] for u in updates if u["type"] == "nexus.kam.request.created"]
    assert created == [first, missed, after], updates
    assert [int(i) for i in ids] == sorted(int(i) for i in ids), "updates out of order"
