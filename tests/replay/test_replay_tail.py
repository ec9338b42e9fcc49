"""``nexus.replay.tail`` with a type filter: fixed, or asked again after each event so that a fold
whose needs change with an event it follows gets every event of the new types after it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from nexus.eventlog import EventLog, open_event_log
from nexus.proto import CloudEvent, new_event
from nexus.replay import tail


@pytest.fixture(params=["memory", "sqlite"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'events.db'}"
    log = await open_event_log(url)
    try:
        yield log
    finally:
        await log.close()


def _event(type_: str, **data: Any) -> CloudEvent:
    return new_event(type_, data or {"n": 1}, source="test")


@contextlib.asynccontextmanager
async def _running(log: EventLog, **options: Any) -> AsyncIterator[list[CloudEvent]]:
    seen: list[CloudEvent] = []
    task = asyncio.create_task(tail(log, seen.append, **options))
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(predicate: Callable[[], Any], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def test_a_tail_with_types_hands_over_only_those(log: EventLog) -> None:
    stored = await log.append("s", [_event(("t.a", "t.b", "t.c")[n % 3], n=n) for n in range(30)])
    async with _running(log, types=["t.a", "t.c"]) as seen:
        later = await log.append("s", [_event("t.b"), _event("t.c")])
        await _until(lambda: len(seen) == 21)
        await asyncio.sleep(0.1)
    assert seen == [e for e in stored + later if e.type in ("t.a", "t.c")]


async def test_a_set_that_changes_with_an_event_takes_effect_right_after_it(log: EventLog) -> None:
    # The fold follows "t.follow" and whatever types those events name; each event of a named
    # type comes right after the one that names it, in the same append, so the tail's read
    # that found the naming event was made with the old set.
    followed = {"t.follow"}
    seen: list[CloudEvent] = []

    def apply(event: CloudEvent) -> None:
        seen.append(event)
        if event.type == "t.follow":
            followed.add(event.data["type"])

    task = asyncio.create_task(tail(log, apply, types=lambda: frozenset(followed)))
    try:
        await log.append("s", [_event("t.x"), _event("t.follow", type="t.x"), _event("t.x", n=2), _event("t.y")])
        await log.append("s", [_event("t.follow", type="t.y"), _event("t.y", n=2), _event("t.z")])
        await _until(lambda: len(seen) == 4)
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Each type from right after the event that named it: not before, and nothing twice.
    assert [(e.type, e.data.get("n"), e.data.get("type")) for e in seen] == [
        ("t.follow", None, "t.x"),
        ("t.x", 2, None),
        ("t.follow", None, "t.y"),
        ("t.y", 2, None),
    ]


async def test_a_lone_string_is_refused(log: EventLog) -> None:
    with pytest.raises(TypeError, match="not one string"):
        await tail(log, lambda event: None, types=lambda: "t.a")


async def test_a_tail_ends_quietly_when_its_log_is_closed(log: EventLog, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[CloudEvent] = []
    task = asyncio.create_task(tail(log, seen.append, retry_delay=0.05))
    await log.append("s", [_event("t.a")])
    await _until(lambda: len(seen) == 1)
    await log.close()
    await asyncio.wait_for(task, 5)  # ends, instead of retrying a closed log for ever
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
