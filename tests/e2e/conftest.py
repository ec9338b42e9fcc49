"""Fixtures of the end-to-end tests: the stub service behind the steps and the assembled platform."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from e2e_platform import Platform, Stub, stub_app


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    calls: list[dict[str, Any]] = []
    async with TestServer(await stub_app(calls), host="127.0.0.1", port=0) as server:
        yield Stub(str(server.make_url("")).rstrip("/"), calls)


@pytest.fixture
async def platform(nats_server: str, tmp_path: Path, stub: Stub) -> AsyncIterator[Platform]:
    platform = Platform(nats_server, tmp_path / "data", stub)
    (tmp_path / "data").mkdir()
    try:
        await platform.open()
        await platform.register_job()
        yield platform
    finally:
        await platform.close()
