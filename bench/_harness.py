"""The benchmark harness: suites return rows; the runner prints one table and records it.

A suite is a module ``bench/bench_<name>.py`` with::

    async def run(ctx: Context) -> list[Row]

Each row is one measured figure, with the target it is held to (if any) and a peer figure
measured in the same run (if any). Medians of ``ctx.repeats`` runs are what a row reports.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Row:
    suite: str
    """Which suite measured it (eventlog, bus, atlas, …)."""
    name: str
    """What was measured, e.g. ``append batch=100 sync=FULL``."""
    value: float
    """The median figure."""
    unit: str
    """``events/s``, ``ms``, ``MB/s`` …"""
    target: str = ""
    """The target, as text (``>= 100000``, ``<= 25``), empty when there is none."""
    met: bool | None = None
    """Whether the target was met (None without a target)."""
    peer: str = ""
    """A peer's figure in the same run and the ratio, e.g. ``eventsourcing 9,100 (x11.2)``."""
    note: str = ""


@dataclass
class Context:
    quick: bool = False
    """Smaller workloads (for a smoke run); the recorded table uses full ones."""
    repeats: int = 3
    workdir: Path = field(default_factory=lambda: Path("bench/.data"))

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def target_row(
    suite: str,
    name: str,
    value: float,
    unit: str,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    peer: str = "",
    note: str = "",
) -> Row:
    """A row held to ``value >= at_least`` or ``value <= at_most``."""
    if at_least is not None:
        return Row(suite, name, value, unit, f">= {at_least:,.0f}", value >= at_least, peer, note)
    if at_most is not None:
        return Row(suite, name, value, unit, f"<= {at_most:g}", value <= at_most, peer, note)
    return Row(suite, name, value, unit, "", None, peer, note)


async def median_rate(work: Callable[[], Awaitable[int]], repeats: int) -> float:
    """Median items/s over ``repeats`` runs of ``work`` (which returns how many items it did)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = await work()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0–100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def machine() -> str:
    """One line describing the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def format_value(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:,.2f}"
    return f"{value:.4f}"


def render_table(rows: list[Row]) -> str:
    lines = [
        "| suite | measurement | median | unit | target | met | peer (same run) | note |",
        "| --- | --- | ---: | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.suite} | {r.name} | {format_value(r.value)} | {r.unit} | {r.target} | {met} | {r.peer} | {r.note} |"
        )
    return "\n".join(lines)
