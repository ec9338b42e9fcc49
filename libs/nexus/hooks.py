"""Injectable clock, metrics and tracer (seed 003: every component takes them, defaults do nothing).

The Atlas, Raw and the proof manifests take these; they live here, outside any of them and with
no dependency beyond the standard library, so that a library needing a clock does not import
the Atlas (nor ``nexus.obs``, which loads Prometheus and OpenTelemetry).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Clock",
    "FixedClock",
    "Metrics",
    "NoopMetrics",
    "NoopTracer",
    "RecordingMetrics",
    "RecordingTracer",
    "SystemClock",
    "Tracer",
]


@runtime_checkable
class Clock(Protocol):
    """Where the Atlas, Raw and proofs read the time; inject a fixed one for deterministic tests."""

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...


@runtime_checkable
class Metrics(Protocol):
    """A sink for counters and observations (Prometheus, a test recorder, …)."""

    def increment(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to the counter ``name``."""
        ...

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (a duration in seconds, a size in bytes) of ``name``."""
        ...


@runtime_checkable
class Tracer(Protocol):
    """Opens spans around operations (OpenTelemetry or a test recorder)."""

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        """A context manager that covers one operation."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()


class FixedClock:
    """A clock that only moves when told to: deterministic tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.value = start

    def now(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


class NoopMetrics:
    """Discards everything."""

    def increment(self, name: str, value: float = 1.0, **labels: str) -> None:
        return None

    def observe(self, name: str, value: float, **labels: str) -> None:
        return None


class NoopTracer:
    """Opens no spans."""

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        yield None


class RecordingMetrics:
    """Keeps counters and observations in dicts, for tests and the command line."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.observations: dict[str, list[float]] = {}

    def increment(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.observations.setdefault(name, []).append(value)

    def count(self, name: str, **labels: str) -> float:
        """The counter's value summed over label sets that include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, lab), v in self.counters.items() if n == name and wanted <= set(lab))


class RecordingTracer:
    """Records the names and attributes of spans it opens."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, dict[str, Any]]] = []

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        self.spans.append((name, attributes))
        yield None
