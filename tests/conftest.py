"""Shared fixtures: a real nats-server on port 0 per test, an in-memory event log, and a
database of its own per test on the session's PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nexus.bus.embedded import EmbeddedNats
from nexus.eventlog.memory import MemoryEventLog
from nexus.testing._postgres import PostgresServer, PostgresUnavailable, shared_server


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


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The session's PostgreSQL server (``nexus.testing._postgres``); the test is skipped, with the
    reason, where none can be started."""
    try:
        return shared_server()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a clean database of the test's own (with the password), emptied after it."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.release_database(url)
