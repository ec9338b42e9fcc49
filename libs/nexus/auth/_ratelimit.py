"""A sliding-window limiter in memory: at most N hits per key within a window of seconds.

Used by KAM's login (failures per user and per client address)::

    failures = SlidingWindowLimiter(limit=5, window=60.0)
    wait = failures.retry_after(key)       # 0.0: go on; else answer 429 with Retry-After
    failures.hit(key)                      # count this attempt (before the slow check)
    failures.forgive(key)                  # it succeeded: take it back

Each replica counts on its own (no shared state): N replicas behind a balancer allow up to N
times the limit, which still bounds guessing to a few attempts per minute per key.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class SlidingWindowLimiter:
    """Counts hits per key over the last ``window`` seconds; a key with ``limit`` hits waits.

    Memory is bounded: at most ``max_keys`` keys are tracked, the least recently hit dropped
    first (an attacker spraying keys forgets its own oldest ones, not a victim's newest).

    Args:
        limit: Hits allowed per key within the window (>= 1).
        window: The window's length in seconds (> 0).
        max_keys: Keys tracked at most.
        clock: Monotonic seconds (default ``time.monotonic``; tests pass a fake).
    """

    def __init__(
        self, limit: int, window: float, *, max_keys: int = 10_000, clock: Callable[[], float] | None = None
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock or time.monotonic
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may be hit again; 0.0 when it may be now."""
        now = self._clock()
        hits = self._recent(key, now)
        if hits is None or len(hits) < self.limit:
            return 0.0
        # The oldest hit that keeps the key at its limit leaves the window first.
        return max(0.0, hits[len(hits) - self.limit] + self.window - now)

    def retry_after_seconds(self, key: str) -> int:
        """``retry_after`` rounded up to whole seconds, as ``Retry-After`` needs (0: go on)."""
        wait = self.retry_after(key)
        return math.ceil(wait) if wait > 0 else 0

    def hit(self, key: str) -> None:
        """Count one hit for ``key`` now."""
        now = self._clock()
        hits = self._recent(key, now)
        if hits is None:
            hits = self._hits[key] = deque()
        hits.append(now)
        self._hits.move_to_end(key)
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)

    def forgive(self, key: str) -> None:
        """Take back the most recent hit of ``key`` (the attempt it counted succeeded)."""
        hits = self._hits.get(key)
        if hits:
            hits.pop()
            if not hits:
                del self._hits[key]

    def reset(self, key: str) -> None:
        """Forget every hit of ``key``."""
        self._hits.pop(key, None)

    def __len__(self) -> int:
        """How many keys are tracked."""
        return len(self._hits)
