"""Server-Sent Events for routes: the one way a Nexus service streams ``text/event-stream``.

::

    async with EventStream(request, keepalive=15.0) as sse:
        after = sse.last_event_version()          # a reconnecting client's Last-Event-ID
        async for state in sse.each(engine.watch(execution_id)):
            await sse.send(encode(state), event="state", id=state.version)
    return sse.response

``EventStream`` prepares the response with the stream's headers, writes ``id:``/``event:``/
``data:`` frames, sends a keep-alive comment whenever the source has been silent for
``keepalive`` seconds (without cancelling the source, so a slow execution is not cut off), and
ends with ``write_eof``. A client that goes away (a reset connection, a write to a closing
transport, the handler cancelled) is an ordinary end of a stream: it is logged at DEBUG, never
as an error, and no EOF is written to a connection that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from types import TracebackType
from typing import Final, TypeVar

from aiohttp import web

__all__ = ["SSE_HEADERS", "EventStream"]

logger = logging.getLogger("nexus.runtime.sse")

T = TypeVar("T")

SSE_HEADERS: Final[Mapping[str, str]] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Proxies that buffer responses (nginx) would hold the events back.
    "X-Accel-Buffering": "no",
}
"""The headers of every event stream."""


def _field(name: bytes, value: str | int) -> bytes:
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"an SSE {name.decode()} cannot contain a line break: {text!r}")
    return b"%s: %s\n" % (name, text.encode())


class EventStream:
    """One Server-Sent Events response, used as an async context manager around the route's loop.

    Args:
        request: The route's request.
        keepalive: Seconds of silence after which ``each`` writes a ``: keep-alive`` comment.
        headers: Extra response headers.

    Attributes:
        response: The aiohttp response; return it from the handler.
        gone: True once the client was found to have gone away.
    """

    def __init__(
        self, request: web.Request, *, keepalive: float = 15.0, headers: Mapping[str, str] | None = None
    ) -> None:
        if keepalive <= 0:
            raise ValueError("keepalive must be positive")
        self.request = request
        self.keepalive = keepalive
        self.response = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
        self.gone = False
        self._sources: list[AsyncGenerator[object, None]] = []

    @property
    def last_event_id(self) -> str | None:
        """The ``Last-Event-ID`` a reconnecting client sent, or None."""
        value = self.request.headers.get("Last-Event-ID", "").strip()
        return value or None

    def last_event_version(self) -> int | None:
        """``Last-Event-ID`` as a non-negative integer (a version or position), None when absent or not one.

        A route whose ids are versions resumes by skipping what the client already has.
        """
        value = self.last_event_id
        if value is None or not value.isdigit() or len(value) > 19:
            return None
        return int(value)

    async def __aenter__(self) -> EventStream:
        await self.response.prepare(self.request)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        for source in self._sources:
            with contextlib.suppress(ConnectionResetError, StopAsyncIteration):
                await source.aclose()
        if exc is not None and isinstance(exc, ConnectionResetError):
            self._went_away(exc)
            return True  # the client went away: the end of its stream, not an error
        if isinstance(exc, asyncio.CancelledError):
            # aiohttp cancels the handler when its client disconnects (or the server stops):
            # an ordinary end too, but the cancellation goes on.
            self._went_away(exc)
            return False
        if exc is not None:
            return False  # a real error: as it is
        if not self.gone:
            try:
                await self.response.write_eof()
            except ConnectionResetError as reset:
                self._went_away(reset)
        return False

    def _went_away(self, exc: BaseException) -> None:
        self.gone = True
        logger.debug(
            "%s %s: the client closed the event stream (%s)",
            self.request.method,
            self.request.path,
            type(exc).__name__,
        )

    async def send(self, data: str | bytes, *, event: str | None = None, id: str | int | None = None) -> None:
        """Write one event: ``id:``, ``event:``, one ``data:`` line per line of ``data``, a blank line.

        Raises:
            ConnectionResetError: the client went away (``async with`` ends the stream quietly).
        """
        frame = bytearray()
        if id is not None:
            frame += _field(b"id", id)
        if event is not None:
            frame += _field(b"event", event)
        payload = data.encode() if isinstance(data, str) else data
        for line in payload.splitlines() or [b""]:
            frame += b"data: " + line + b"\n"
        frame += b"\n"
        await self.response.write(bytes(frame))

    async def comment(self, text: str = "keep-alive") -> None:
        """Write a comment line (clients ignore it; proxies see traffic)."""
        await self.response.write(b": %s\n\n" % text.replace("\n", " ").encode())

    def each(self, source: AsyncIterable[T]) -> AsyncGenerator[T, None]:
        """The items of ``source``; while it is silent for ``keepalive`` seconds, a keep-alive comment.

        The wait for the next item is never cancelled by a keep-alive (a watch over a slow
        execution is not cut off). The source is closed when the loop ends, or at the latest
        when the stream does (a loop left with ``break``).
        """
        generator = self._each(source)
        self._sources.append(generator)
        return generator

    async def _each(self, source: AsyncIterable[T]) -> AsyncGenerator[T, None]:
        iterator = aiter(source)
        pending: asyncio.Future[T] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({pending}, timeout=self.keepalive)
                if not done:
                    await self.comment()
                    continue
                finished, pending = pending, None
                try:
                    item = finished.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
