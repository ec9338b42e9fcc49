"""Quiet retry loops: a repeated error is logged once per interval, with how often it happened.

A loop that retries every half second against a server that is gone would otherwise write
thousands of identical lines. ``RateLimitedLog`` writes the first occurrence of a key at once,
counts the repeats, and writes the next one only when the interval has passed, saying how many
were left out::

    quiet = RateLimitedLog(logger, interval=10.0)
    while True:
        try:
            await pull()
            quiet.clear("pull")
        except NatsError as exc:
            quiet.warning("pull", "consumer %s: pull request failed: %r", name, exc)
            await asyncio.sleep(backoff.next())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Backoff", "RateLimitedLog"]


class RateLimitedLog:
    """Logs each key at most once per ``interval`` seconds and counts what it held back.

    The line written after a quiet period ends with ``(N more in the last S s)`` and carries the
    count in ``extra={"repeated": N}``, so a JSON log keeps it as a field.

    Args:
        logger: Where the lines go.
        interval: Seconds between two lines of the same key.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(
        self, logger: logging.Logger, *, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` under ``key`` unless it was logged less than ``interval`` ago.

        Returns:
            True when the line was written, False when it was only counted.
        """
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            since = now - last if last is not None else 0.0
            self.logger.log(level, msg + " (%d more in the last %.0f s)", *args, held, since, extra={"repeated": held})
        else:
            self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def held(self, key: str) -> int:
        """How many lines of ``key`` were counted and not written since the last one."""
        return self._held.get(key, 0)

    def clear(self, key: str) -> int:
        """The condition behind ``key`` is over: the next occurrence is logged at once.

        Returns:
            The occurrences held back since the last line (0 if none).
        """
        self._last.pop(key, None)
        return self._held.pop(key, 0)


class Backoff:
    """Growing delays for a retry loop: ``first``, doubled each time up to ``maximum``.

    Args:
        first: The first delay in seconds.
        maximum: The longest delay.
    """

    def __init__(self, first: float = 0.1, maximum: float = 5.0) -> None:
        if not 0 < first <= maximum:
            raise ValueError(f"need 0 < first <= maximum, got {first!r} and {maximum!r}")
        self.first = first
        self.maximum = maximum
        self._next = first

    def next(self) -> float:
        """The delay to wait now; the one after is twice as long (at most ``maximum``)."""
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """The operation succeeded: the next failure waits ``first`` again."""
        self._next = self.first
