"""The correlation id: set by a caller or a provider, stamped on events and on every JSON log line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from nexus.eventlog.memory import MemoryEventLog
from nexus.obs import (
    correlation,
    current_correlation_id,
    set_correlation_provider,
    setup_logging,
)
from nexus.proto import new_event


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a buffer (the handlers before are put back)."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    buffer = io.StringIO()
    setup_logging("tests", "info", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in before:
        root.addHandler(handler)
    root.setLevel(level)


def _records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_events_appended_inside_a_correlation_carry_it() -> None:
    log = MemoryEventLog()
    with correlation("req-42") as cid:
        assert cid == "req-42" and current_correlation_id() == "req-42"
        inside = new_event("t.happened", {"n": 1}, source="tests")
        # An explicit id is the caller's choice and wins.
        explicit = new_event("t.happened", {"n": 2}, source="tests", correlationid="other")
    outside = new_event("t.happened", {"n": 3}, source="tests")
    await log.append("s-1", [inside, explicit, outside])
    stored = await log.read_stream("s-1")
    assert [e.correlationid for e in stored] == ["req-42", "other", None]
    assert current_correlation_id() is None


async def test_nested_blocks_new_ids_and_tasks() -> None:
    with correlation() as generated:
        # A new id when none is given: a UUIDv7, 36 characters.
        assert len(generated) == 36
        with correlation("inner"):
            assert new_event("t", {}, source="s").correlationid == "inner"
        assert current_correlation_id() == generated

        async def in_task() -> str | None:
            return new_event("t", {}, source="s").correlationid

        # asyncio copies the context into the tasks started inside the block.
        assert await asyncio.create_task(in_task()) == generated
    with pytest.raises(ValueError, match="printable ASCII"):
        with correlation("has space"):
            pass
    with pytest.raises(ValueError, match="printable ASCII"):
        with correlation("x" * 257):
            pass


def test_an_injected_provider_answers_outside_a_block() -> None:
    ids = iter(["p-1", "p-2"])
    previous = set_correlation_provider(lambda: next(ids))
    try:
        assert new_event("t", {}, source="s").correlationid == "p-1"
        with correlation("block"):
            # The block is the narrower scope: it wins over the provider.
            assert new_event("t", {}, source="s").correlationid == "block"
        assert current_correlation_id() == "p-2"
    finally:
        set_correlation_provider(previous)
    assert current_correlation_id() is None


def test_every_log_line_carries_the_correlation_id(lines: io.StringIO) -> None:
    logger = logging.getLogger("tests.correlation")
    logger.info("before")
    with correlation("req-7"):
        logger.info("during")
        logger.warning("with extra", extra={"correlation_id": "explicit"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    logger.info("after")
    records = _records(lines)
    assert [(r["message"], r.get("correlation_id")) for r in records] == [
        ("before", None),
        ("during", "req-7"),
        ("with extra", "explicit"),
        ("failed", "req-7"),
        ("after", None),
    ]
    assert "RuntimeError: boom" in records[3]["error"]
