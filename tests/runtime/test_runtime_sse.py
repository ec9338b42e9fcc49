"""The runtime's one SSE helper (``EventStream``), read back with the clients' one parser (``parse_sse``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from nexus.client import parse_sse
from nexus.runtime import EventStream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Server:
    """A real aiohttp server on port 0, run as ``Service`` runs it (an ``AppRunner``)."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port

    def make_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def _serve(handler: Handler, *, handler_cancellation: bool = False) -> _Server:
    app = web.Application()
    app.router.add_get("/stream", handler)
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return _Server(runner, port)


async def test_frames_headers_resume_id_and_end_of_stream() -> None:
    seen_resume: list[int | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        async with EventStream(request, keepalive=5) as sse:
            seen_resume.append(sse.last_event_version())
            await sse.comment("connected")
            await sse.send('{"n": 1}', event="state", id=7)
            await sse.send(b"two\nlines")
        return sse.response

    server = await _serve(handler)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.make_url("/stream"), headers={"Last-Event-ID": "6"}) as resp,
        ):
            # The stream's headers, then every frame; the stream ends with the server's EOF.
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["Cache-Control"] == "no-cache"
            assert resp.headers["X-Accel-Buffering"] == "no"
            raw = await resp.read()
        assert raw == (b': connected\n\nid: 7\nevent: state\ndata: {"n": 1}\n\ndata: two\ndata: lines\n\n')

        async def lines() -> AsyncIterator[bytes]:
            for line in raw.splitlines(keepends=True):
                yield line

        events = [e async for e in parse_sse(lines())]
        assert events == [{"id": "7", "event": "state", "data": '{"n": 1}'}, {"data": "two\nlines"}]
        assert seen_resume == [6]
    finally:
        await server.close()


async def test_last_event_id_that_is_not_a_version_is_ignored() -> None:
    seen: list[tuple[str | None, int | None]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        async with EventStream(request) as sse:
            seen.append((sse.last_event_id, sse.last_event_version()))
        return sse.response

    server = await _serve(handler)
    try:
        async with aiohttp.ClientSession() as session:
            for header in ({}, {"Last-Event-ID": "x1"}, {"Last-Event-ID": "-3"}, {"Last-Event-ID": "9" * 40}):
                async with session.get(server.make_url("/stream"), headers=header) as resp:
                    await resp.read()
        assert seen == [(None, None), ("x1", None), ("-3", None), ("9" * 40, None)]
    finally:
        await server.close()


async def test_keep_alive_while_the_source_is_silent_does_not_cut_it_off() -> None:
    # The source is silent for several keep-alive intervals, then yields: a keep-alive must not
    # cancel the wait (a slow execution's watch would end early), and the item still arrives.
    closed = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        try:
            await asyncio.sleep(0.35)
            yield "late"
        finally:
            closed.set()

    async def handler(request: web.Request) -> web.StreamResponse:
        async with EventStream(request, keepalive=0.05) as sse:
            async for item in sse.each(slow()):
                await sse.send(item)
        return sse.response

    server = await _serve(handler)
    try:
        async with aiohttp.ClientSession() as session, session.get(server.make_url("/stream")) as resp:
            raw = await resp.read()
        assert raw.count(b": keep-alive\n\n") >= 3
        assert raw.endswith(b"data: late\n\n")
        assert closed.is_set()
    finally:
        await server.close()


async def test_a_loop_that_breaks_off_closes_its_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        n = 0
        try:
            while True:
                n += 1
                yield n
        finally:
            closed.set()

    async def handler(request: web.Request) -> web.StreamResponse:
        async with EventStream(request) as sse:
            async for n in sse.each(endless()):
                await sse.send(str(n), id=n)
                if n == 3:
                    break
        return sse.response

    server = await _serve(handler)
    try:
        async with aiohttp.ClientSession() as session, session.get(server.make_url("/stream")) as resp:
            events = [e async for e in parse_sse(resp.content)]
        assert [e["id"] for e in events] == ["1", "2", "3"]
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        await server.close()


@pytest.mark.parametrize("handler_cancellation", [False, True], ids=["write-fails", "handler-cancelled"])
async def test_a_client_going_away_is_an_ordinary_end(
    caplog: pytest.LogCaptureFixture, handler_cancellation: bool
) -> None:
    # Without handler cancellation (how Service runs) the next write fails with a reset;
    # with it, aiohttp cancels the handler. Either way: quiet, and the source is closed.
    ended: asyncio.Queue[str] = asyncio.Queue()

    async def ticks() -> AsyncIterator[int]:
        n = 0
        try:
            while True:
                n += 1
                yield n
                await asyncio.sleep(0.01)
        finally:
            await ended.put("source closed")

    async def handler(request: web.Request) -> web.StreamResponse:
        sse = EventStream(request, keepalive=0.05)
        try:
            async with sse:
                async for n in sse.each(ticks()):
                    await sse.send("x" * 1024, id=n)
        finally:
            # aiohttp cancels the handler of a client that went away, or the write fails.
            await ended.put(f"stream ended, gone={sse.gone}")
        return sse.response

    server = await _serve(handler, handler_cancellation=handler_cancellation)
    try:
        with caplog.at_level(logging.DEBUG):
            async with aiohttp.ClientSession() as session:
                resp = await session.get(server.make_url("/stream"))
                await resp.content.readline()
                resp.close()  # the client goes away mid-stream
            results = {await asyncio.wait_for(ended.get(), 10) for _ in range(2)}
        assert results == {"source closed", "stream ended, gone=True"}
        # Said at DEBUG, never as an error: no ERROR record, no traceback from aiohttp.
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        said = [r.getMessage() for r in caplog.records if "closed the event stream" in r.getMessage()]
        assert len(said) == 1
        assert ("CancelledError" in said[0]) is handler_cancellation, said
    finally:
        await server.close()


def test_keepalive_must_be_positive() -> None:
    with pytest.raises(ValueError, match="keepalive"):
        EventStream(make_mocked_request("GET", "/stream"), keepalive=0)
