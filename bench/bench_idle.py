"""An idle platform and a waiting subscriber: what doing nothing costs, how fast a wake-up is.

Idle: ``nexus up`` (the platform as ``make run`` starts it: NATS, the relay, the four services)
in a directory of its own, left alone once every service is ready and the start-up work is
done; the CPU time its processes use over the window (``/proc/<pid>/stat`` user + system of
every descendant, so nats-server counts too), as a share of one core, and their resident memory.
The peer is nats-server's own share in the same run: a floor the Python processes add to.

Wake-up: a subscriber in another process follows a SQLite log (``EventLog.subscribe``) while
this process appends one event at a time, spaced so the subscriber is idle before each one;
the figure is the time from the append's return (the event is durable: the commit's fsync is
not counted) to the subscriber holding the event, 0 when it had it first
(``time.monotonic_ns`` is one clock for every process of the machine). The peer is a
subscriber in the appending process, woken by the writer itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from bench._harness import Context, Row, percentile, target_row
from nexus.eventlog.sqlite import SqliteEventLog
from nexus.proto import new_event
from nexus.testing import running_platform

SUITE = "idle"
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

_SUBSCRIBER = r"""
import asyncio, json, sys, time
from nexus.eventlog.sqlite import SqliteEventLog

async def main(url: str, count: int) -> None:
    log = await SqliteEventLog.open(url)
    start = await log.head() + 1
    print("ready", flush=True)
    received = []
    async for event in log.subscribe(start, types=["nexus.bench.ping.sent"]):
        received.append(time.monotonic_ns())
        if len(received) == count:
            break
    print(json.dumps(received), flush=True)
    await log.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.append(child)
                frontier.append(child)
    return found


def _usage(pids: list[int]) -> dict[int, tuple[str, float, int]]:
    """Each live process: (name, CPU seconds used so far, resident bytes)."""
    usage = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS
        rss = int(fields[21]) * _PAGE
        usage[pid] = (_name(command), cpu, rss)
    return usage


def _name(command: list[bytes]) -> str:
    words = [w.decode(errors="replace") for w in command if w]
    for word in words:
        if word.startswith("nexus.services.") or word == "nexus.relay":
            return word.removeprefix("nexus.services.").removeprefix("nexus.")
    if words and "nats-server" in words[0]:
        return "nats"
    return Path(words[0]).name if words else "?"


async def _idle(ctx: Context) -> list[Row]:
    window = ctx.scale(60, 10)
    async with running_platform(ctx.workdir / "platform", ready_timeout=120) as up:
        # Start-up work (folds, stream creation, the first heartbeats) settles first.
        await asyncio.sleep(ctx.scale(15, 5))
        pids = [up.process.pid, *_descendants(up.process.pid)]
        before = _usage(pids)
        started = time.monotonic()
        await asyncio.sleep(window)
        after = _usage(pids)
        elapsed = time.monotonic() - started
    shares: dict[str, float] = {}
    memory = 0
    for pid, (name, cpu, rss) in after.items():
        if pid in before:
            shares[name] = shares.get(name, 0.0) + (cpu - before[pid][1]) / elapsed * 100
            memory += rss
    total = sum(shares.values())
    detail = ", ".join(f"{name} {share:.2f}" for name, share in sorted(shares.items(), key=lambda kv: -kv[1]))
    load = os.getloadavg()[0]
    return [
        target_row(
            SUITE,
            f"idle nexus up, CPU over {window} s (all processes)",
            total,
            "% of a core",
            at_most=0.5,
            peer=f"nats-server alone {shares.get('nats', 0.0):.2f}",
            note=f"{detail}; load average {load:.1f} during the run",
        ),
        Row(
            SUITE,
            "idle nexus up, resident memory (all processes)",
            memory / 2**20,
            "MB",
            note=f"{len(after)} processes",
        ),
    ]


async def _append_pings(log: SqliteEventLog, count: int, spacing: float) -> list[int]:
    """Append ``count`` events one at a time; when each append returned (``monotonic_ns``)."""
    returned = []
    for i in range(count):
        await log.append("pings", [new_event("nexus.bench.ping.sent", {"i": i}, source="bench")])
        returned.append(time.monotonic_ns())
        await asyncio.sleep(spacing)
    return returned


def _delays(returned: list[int], received: list[int]) -> list[float]:
    return [max(0, got - done) / 1e6 for done, got in zip(returned, received, strict=True)]


async def _latencies_in_process(url: str, count: int, spacing: float) -> list[float]:
    log = await SqliteEventLog.open(url)
    try:
        start = await log.head() + 1
        received: list[int] = []

        async def follow() -> None:
            async for _event in log.subscribe(start, types=["nexus.bench.ping.sent"]):
                received.append(time.monotonic_ns())
                if len(received) == count:
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(spacing)
        returned = await _append_pings(log, count, spacing)
        await asyncio.wait_for(follower, 30)
        return _delays(returned, received)
    finally:
        await log.close()


async def _latencies_across(url: str, count: int, spacing: float) -> list[float]:
    log = await SqliteEventLog.open(url)
    subscriber = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUBSCRIBER, url, str(count), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert subscriber.stdout is not None
        assert (await asyncio.wait_for(subscriber.stdout.readline(), 30)).strip() == b"ready"
        await asyncio.sleep(0.5)
        returned = await _append_pings(log, count, spacing)
        line = await asyncio.wait_for(subscriber.stdout.readline(), 30)
        return _delays(returned, json.loads(line))
    finally:
        if subscriber.returncode is None:
            subscriber.kill()
        await subscriber.wait()
        await log.close()


async def _wake(ctx: Context) -> list[Row]:
    count = ctx.scale(300, 50)
    spacing = 0.02
    url = f"sqlite:///{ctx.workdir / 'wake.db'}"
    across = await _latencies_across(url, count, spacing)
    local = await _latencies_in_process(url, count, spacing)
    return [
        target_row(
            SUITE,
            f"append -> subscriber in another process, p99 of {count} (SQLite)",
            percentile(across, 99),
            "ms",
            at_most=10,
            peer=f"same process {percentile(local, 99):.2f}",
            note=(
                f"p50 {percentile(across, 50):.2f} ms, max {max(across):.2f} ms; "
                f"one append every {spacing * 1000:.0f} ms, from its return"
            ),
        )
    ]


async def run(ctx: Context) -> list[Row]:
    return [*await _wake(ctx), *await _idle(ctx)]
