"""``with_retry``: run an async operation again after a failure, with growing, jittered delays.

Seed 003's ``withRetry(operation, maxAttempts)``, typed and bounded::

    data = await with_retry(lambda: raw.retrieve("file.txt"), retry_on=(RawUnavailableError,))

Only the exceptions named in ``retry_on`` are retried; anything else, and cancellation, goes
straight to the caller. After the last attempt the last exception is raised as it was, with a
note saying how many attempts were made. Delays grow from ``first_delay`` by ``multiplier`` up
to ``max_delay``, each spread by ``jitter`` (a fraction of the delay drawn at random), so many
callers that failed together do not come back together. ``sleep``, ``random`` and ``clock``
are injectable: a test runs every attempt without waiting and sees the delays it asked for.

This is for a caller's own operation (a client call, a read of a store that may be
restarting). Workflow steps have their own durable retry policy (``retry:`` in the workflow
YAML, recorded in the event log); the bus redelivers commands by its consumers' back-off.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["RetryAttempt", "RetryPolicy", "with_retry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently ``with_retry`` tries.

    The defaults are the seed's: three attempts, 100 ms before the second, growing.
    """

    attempts: int = 3
    """Attempts in all, the first included (1: no retry)."""
    first_delay: float = 0.1
    """Seconds before the second attempt."""
    multiplier: float = 2.0
    """Each further delay is the previous one times this (1: constant delays)."""
    max_delay: float = 10.0
    """No delay is longer than this, jitter included."""
    jitter: float = 0.1
    """Fraction of each delay drawn at random: the delay is in ``[d·(1-jitter), d·(1+jitter)]``."""
    retry_on: tuple[type[Exception], ...] = (Exception,)
    """The exceptions worth another attempt; every other one is raised at once."""
    max_elapsed: float | None = None
    """Seconds from the first attempt after which no new attempt starts (None: no limit)."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts!r}")
        if self.first_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError("max_elapsed must not be negative")
        for kind in self.retry_on:
            # CancelledError, KeyboardInterrupt and SystemExit are not Exceptions: they must stop us.
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise ValueError(f"retry_on takes Exception subclasses, got {kind!r}")

    def delay(self, failed_attempt: int, draw: float) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed; ``draw`` is uniform in [0, 1)."""
        base = min(self.first_delay * self.multiplier ** (failed_attempt - 1), self.max_delay)
        return min(base * (1 - self.jitter + 2 * self.jitter * draw), self.max_delay)


@dataclass(frozen=True)
class RetryAttempt:
    """What ``on_retry`` is told before each wait."""

    attempt: int
    """The attempt that failed (1-based)."""
    error: Exception
    delay: float
    """Seconds until the next attempt."""


async def with_retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy | None = None,
    *,
    attempts: int | None = None,
    retry_on: tuple[type[Exception], ...] | None = None,
    on_retry: Callable[[RetryAttempt], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    random: Callable[[], float] = _random.random,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Await ``operation()`` until it succeeds or the policy gives up; its result.

    Args:
        operation: Makes a fresh awaitable on every call (a coroutine can be awaited once).
        policy: Attempts, delays and what to retry (default ``RetryPolicy()``).
        attempts: Shorthand that overrides ``policy.attempts``.
        retry_on: Shorthand that overrides ``policy.retry_on``.
        on_retry: Called after each failure that will be retried (to log or count it).
        sleep: Waits between attempts (tests pass one that records and returns at once).
        random: Draws the jitter, uniform in [0, 1).
        clock: Monotonic seconds, for ``max_elapsed``.

    Raises:
        Exception: the last attempt's exception when every attempt failed (with a note), or the
            first exception not in ``retry_on``.
        ValueError: the policy is malformed.
    """
    policy = policy or RetryPolicy()
    if attempts is not None or retry_on is not None:
        policy = RetryPolicy(
            attempts=policy.attempts if attempts is None else attempts,
            first_delay=policy.first_delay,
            multiplier=policy.multiplier,
            max_delay=policy.max_delay,
            jitter=policy.jitter,
            retry_on=policy.retry_on if retry_on is None else retry_on,
            max_elapsed=policy.max_elapsed,
        )
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except policy.retry_on as exc:
            plural = "s" if attempt > 1 else ""
            if attempt >= policy.attempts:
                exc.add_note(f"with_retry: gave up after {attempt} attempt{plural}")
                raise
            delay = policy.delay(attempt, random())
            if policy.max_elapsed is not None and clock() - started + delay > policy.max_elapsed:
                exc.add_note(f"with_retry: gave up after {attempt} attempt{plural} within {policy.max_elapsed:g} s")
                raise
            if on_retry is not None:
                on_retry(RetryAttempt(attempt, exc, delay))
            await sleep(delay)
