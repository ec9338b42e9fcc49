"""``nexus.retry.with_retry``: attempts, jittered back-off, what is retried, injected sleep and clock."""

from __future__ import annotations

import asyncio

import pytest

from nexus.raw import RawNotFoundError, RawUnavailableError, open_raw
from nexus.retry import RetryAttempt, RetryPolicy, with_retry


class Flaky:
    """Fails ``failures`` times with ``error``, then answers ``value``."""

    def __init__(self, failures: int, error: Exception, value: str = "ok") -> None:
        self.failures = failures
        self.error = error
        self.value = value
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.value


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def test_succeeds_after_failures_with_growing_delays() -> None:
    flaky, sleeps, seen = Flaky(2, ConnectionError("refused")), Sleeps(), []
    policy = RetryPolicy(attempts=3, first_delay=0.1, multiplier=2, jitter=0)
    result = await with_retry(flaky, policy, sleep=sleeps, on_retry=seen.append)
    assert result == "ok" and flaky.calls == 3
    assert sleeps.delays == [0.1, 0.2]
    assert [(a.attempt, str(a.error), a.delay) for a in seen] == [(1, "refused", 0.1), (2, "refused", 0.2)]
    assert all(isinstance(a, RetryAttempt) for a in seen)


async def test_gives_up_with_the_last_error_and_a_note() -> None:
    flaky, sleeps = Flaky(5, TimeoutError("slow")), Sleeps()
    with pytest.raises(TimeoutError, match="slow") as caught:
        await with_retry(flaky, attempts=3, sleep=sleeps)
    assert flaky.calls == 3 and len(sleeps.delays) == 2
    assert caught.value.__notes__ == ["with_retry: gave up after 3 attempts"]


async def test_only_the_named_exceptions_are_retried() -> None:
    # A missing key will not appear by asking again: raised at once.
    raw = await open_raw("memory://")
    sleeps = Sleeps()
    calls = 0

    async def read() -> bytes:
        nonlocal calls
        calls += 1
        return await raw.retrieve("file.txt")

    with pytest.raises(RawNotFoundError):
        await with_retry(read, retry_on=(RawUnavailableError,), sleep=sleeps)
    assert calls == 1 and sleeps.delays == []
    # The seed's usage: a store that is briefly unavailable is read on the next attempt.
    await raw.store("file.txt", b"data")
    flaky = Flaky(1, RawUnavailableError("restarting"))

    async def read_after_outage() -> bytes:
        await flaky()
        return await raw.retrieve("file.txt")

    assert await with_retry(read_after_outage, retry_on=(RawUnavailableError,), sleep=sleeps) == b"data"


async def test_jitter_spreads_each_delay_within_bounds_and_the_cap_holds() -> None:
    policy = RetryPolicy(attempts=6, first_delay=1.0, multiplier=3, max_delay=5.0, jitter=0.5)
    assert policy.delay(1, 0.0) == 0.5 and policy.delay(1, 0.999) == pytest.approx(1.499)
    assert policy.delay(2, 0.5) == 3.0
    # 9 s capped to 5, and jitter never pushes it above the cap.
    assert policy.delay(3, 0.999) == 5.0 and policy.delay(3, 0.0) == 2.5
    draws = iter([0.0, 0.25, 0.999, 0.5, 0.5])
    sleeps = Sleeps()
    with pytest.raises(ValueError):
        await with_retry(Flaky(9, ValueError("x")), policy, sleep=sleeps, random=lambda: next(draws))
    assert sleeps.delays == pytest.approx([0.5, 2.25, 5.0, 5.0, 5.0])


async def test_max_elapsed_stops_before_the_deadline() -> None:
    now = [0.0]
    sleeps = Sleeps()

    async def sleep(seconds: float) -> None:
        await sleeps(seconds)
        now[0] += seconds

    policy = RetryPolicy(attempts=100, first_delay=1.0, multiplier=2, jitter=0, max_elapsed=10.0)
    with pytest.raises(OSError) as caught:
        await with_retry(Flaky(100, OSError("down")), policy, sleep=sleep, clock=lambda: now[0])
    # 1 + 2 + 4 = 7 s of waiting; the next 8 s would end past 10 s, so it stops after 4 attempts.
    assert sleeps.delays == [1.0, 2.0, 4.0]
    assert caught.value.__notes__ == ["with_retry: gave up after 4 attempts within 10 s"]


async def test_cancellation_is_never_retried() -> None:
    sleeps = Sleeps()

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await with_retry(cancelled, sleep=sleeps)
    assert sleeps.delays == []
    with pytest.raises(ValueError, match="Exception subclasses"):
        RetryPolicy(retry_on=(BaseException,))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("attempts", 0), ("first_delay", -1.0), ("multiplier", 0.5), ("jitter", 1.5), ("max_elapsed", -1.0)],
)
def test_malformed_policies_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


async def test_the_real_sleep_is_used_by_default() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await with_retry(Flaky(1, ConnectionError()), RetryPolicy(first_delay=0.02, jitter=0)) == "ok"
    assert loop.time() - started >= 0.02
