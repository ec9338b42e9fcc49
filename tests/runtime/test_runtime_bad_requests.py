"""A request aiohttp's parser refuses is answered 400 and logged once per interval, not once each."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.runtime import Service, ServiceSettings


async def _send_raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read(200)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_malformed_requests_are_400_and_do_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    await bus.ensure_streams()
    service = Service(ServiceSettings.from_env("studio", {"NEXUS_STUDIO_PORT": "0"}), log=MemoryEventLog(), bus=bus)
    await service.start()
    try:
        assert service.port is not None
        with caplog.at_level(logging.DEBUG):
            for _ in range(50):
                answer = await _send_raw(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n")
                assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
        # One warning line naming the problem; no traceback at ERROR from aiohttp's server.
        refusals = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
        assert len(refusals) == 1 and "Invalid header value char" in refusals[0].getMessage()
        assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.ERROR]
        # The service goes on answering well-formed requests.
        answer = await _send_raw(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b" 200 " in answer.split(b"\r\n")[0]
    finally:
        await service.stop()
