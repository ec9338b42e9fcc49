"""Shared fixtures: a real nats-server on port 0 per test, and an in-memory event log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus.bus.embedded import EmbeddedNats
from nexus.eventlog.memory import MemoryEventLog


@pytest.fixture
async def embedded_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A running embedded nats-server (JetStream, store under tmp_path, a free port)."""
    async with EmbeddedNats(tmp_path / "nats", port=0) as server:
        yield server


@pytest.fixture
async def nats_server(embedded_nats: EmbeddedNats) -> str:
    """The URL of a fresh nats-server with JetStream, stopped after the test.

    It carries the operator's credentials (the server refuses anonymous clients); tests that
    act as one platform identity use ``embedded_nats.client_url(identity)``.
    """
    return embedded_nats.client_url()


@pytest.fixture
async def memory_log() -> AsyncIterator[MemoryEventLog]:
    """An empty in-memory event log, closed after the test."""
    log = MemoryEventLog()
    yield log
    await log.close()
