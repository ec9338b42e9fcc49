"""Reading Server-Sent Events: the one parser the clients (and the CLI through them) use."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["parse_sse"]


async def parse_sse(content: AsyncIterable[bytes]) -> AsyncIterator[dict[str, str]]:
    """Server-Sent Events from a response body (``resp.content``, or any async iterable of lines).

    Yields one dict per event: ``data`` (its ``data:`` lines joined by newlines) and, when the
    event has them, ``event``, ``id`` and ``retry``. Comments (the server's keep-alive) are skipped.
    """
    event: dict[str, str] = {}
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data or event:
                event["data"] = "\n".join(data)
                yield event
            event, data = {}, []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in ("event", "id", "retry"):
            event[name] = value
