"""A step's answer that cannot fit in one event of the log fails the step, never the engine.

The log refuses an event larger than NEXUS_MAX_EVENT_BYTES (what the bus can carry); a service
answering more than that, or an answer that re-encodes larger than it was read, must end the
execution with an error naming the limit, and the engine goes on with the next execution.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nexus.eventlog.memory import MemoryEventLog

LIMIT = 64 * 1024


@pytest.fixture
async def big() -> AsyncIterator[str]:
    """``/huge``: 200 KB of text; ``/grows``: 40 KB of ``1e5`` that re-encode as ``100000.0``."""

    async def huge(request: web.Request) -> web.Response:
        return web.json_response({"text": "x" * 200_000})

    async def grows(request: web.Request) -> web.Response:
        return web.Response(body=b"[" + b",".join([b"1e5"] * 10_000) + b"]", content_type="application/json")

    async def small(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/huge", huge)
    app.router.add_post("/grows", grows)
    app.router.add_post("/small", small)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        yield str(server.make_url("")).rstrip("/")


def _workflow(workflow_id: str, endpoint: str) -> dict[str, object]:
    return {"id": workflow_id, "steps": [{"id": "call", "service": "big", "endpoint": endpoint, "method": "POST"}]}


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [("/huge", "is larger than the"), ("/grows", "exceeds the log's limit")],
)
async def test_an_answer_too_large_for_one_event_fails_the_execution_and_the_engine_goes_on(
    workflow_service, big: str, endpoint: str, words: str
) -> None:
    log = MemoryEventLog(max_event_bytes=LIMIT)
    svc = await workflow_service(log, NEXUS_SERVICE_BIG=big)
    for workflow_id, path in (("too_big", endpoint), ("fits", "/small")):
        code, body = await svc.post("/workflows", _workflow(workflow_id, path))
        assert code == 201, body

    code, body = await svc.post("/executions", {"workflow_id": "too_big", "input": {}})
    assert code == 202, body
    state = await svc.wait_final(body["id"])
    assert state.status == "FAILED"
    assert words in (state.error or ""), state.error
    # Nothing of the oversized answer reached the log.
    assert all(len(repr(event.data)) < LIMIT for event in await log.read_stream(f"execution-{body['id']}"))

    # The engine is not stuck: the next execution runs to its end.
    code, body = await svc.post("/executions", {"workflow_id": "fits", "input": {}})
    assert (await svc.wait_final(body["id"])).status == "COMPLETED"
