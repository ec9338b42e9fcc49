"""``KeyedWork``: work on keys (an execution id, a run) by a few workers, each key coalesced and retried.

KAM's execution watcher and the studio's transformer both learn from the log that an execution
ended and must then record something about it, once. The same id may be asked for many times
(the end event, a sweep at start, a replica's own transition); ``check`` queues a key once, and
one asked while it is being worked on runs again after, so a late event is never lost. A
failure is logged and retried with back-off; the work itself must be idempotent (it reads the
log and appends with derived ids and expected versions).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["KeyedWork"]

logger = logging.getLogger("nexus.runtime.work")


class KeyedWork:
    """Run ``handle(key)`` for each key asked for, by ``workers`` tasks (see the module).

    Args:
        handle: The work for one key.
        name: Names the worker tasks and the log lines (``kam-watcher``).
        what: What a failure was doing, for its log line (``recording the end of execution``).
        workers: How many keys are worked on at once.
        retry_seconds: The back-off after each successive failure of a key (the last repeats).
    """

    def __init__(
        self,
        handle: Callable[[str], Awaitable[Any]],
        *,
        name: str,
        what: str,
        workers: int = 4,
        retry_seconds: Sequence[float] = (1.0, 2.0, 5.0, 10.0, 30.0),
    ) -> None:
        self._handle = handle
        self._name = name
        self._what = what
        self._workers = workers
        self._retry_seconds = tuple(retry_seconds)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retries: set[asyncio.TimerHandle] = set()

    def check(self, key: str) -> None:
        """Queue ``key`` (once, however often it is asked; again after, if it is being worked on)."""
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def run(self) -> None:
        """Work on queued keys until cancelled."""
        workers = [asyncio.create_task(self._work(), name=f"{self._name}-{i}") for i in range(self._workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            for handle in self._retries:
                handle.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            try:
                await self._handle(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                delay = self._retry_seconds[min(failures, len(self._retry_seconds) - 1)]
                logger.exception("%s: %s %s failed; again in %g s", self._name, self._what, key, delay)
                self._retry_later(key, delay)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.check(key)

    def _retry_later(self, key: str, delay: float) -> None:
        def again() -> None:
            self._retries.discard(handle)
            self.check(key)

        handle = asyncio.get_running_loop().call_later(delay, again)
        self._retries.add(handle)
