"""Seed 003's end-to-end test context: an Atlas, a Raw and a clock, a scratch directory, helpers.

Everything runs in the test's process (memory Raw, in-memory Atlas, a clock that moves only
when told), so a pipeline test is deterministic and fast; ``running_platform`` is the step
up, with the real services as processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from nexus.atlas import AtlasStore
from nexus.hooks import FixedClock, RecordingMetrics, RecordingTracer
from nexus.raw import RawStorage
from nexus.raw.memory import MemoryRaw

__all__ = [
    "E2EContext",
    "create_e2e_context",
    "generate_test_events",
    "read_test_file",
    "write_test_file",
]

EPOCH = 1_700_000_000.0
"""Where the context's clock and the generated events start (2023-11-14T22:13:20Z)."""


@dataclass
class E2EContext:
    """What a pipeline test works with; ``cleanup()`` (or leaving a ``with`` block) removes ``tmp_dir``."""

    atlas: AtlasStore
    raw: RawStorage
    """A memory Raw (``max_raw_size`` bytes at most) behind the instrumented storage."""
    clock: FixedClock
    """The Atlas's and Raw's clock; ``clock.advance(seconds)`` moves it."""
    tmp_dir: Path
    """A fresh directory for files the test writes (``write_test_file``)."""
    metrics: RecordingMetrics | None = None
    """What the Atlas and Raw counted (``enable_metrics``)."""
    tracer: RecordingTracer | None = None
    """The spans they opened (``enable_tracing``)."""
    logger: logging.Logger | None = None
    """Where they logged (``enable_logging``)."""
    _cleaned: bool = field(default=False, repr=False)

    def cleanup(self) -> None:
        """Remove ``tmp_dir`` and what is in it; the Atlas and Raw are left to the garbage collector."""
        if not self._cleaned:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self._cleaned = True

    def __enter__(self) -> E2EContext:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def create_e2e_context(
    *,
    max_raw_size: int | None = 100 * 1024 * 1024,
    enable_logging: bool = False,
    enable_metrics: bool = False,
    enable_tracing: bool = False,
    start: float = EPOCH,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> E2EContext:
    """Seed 003's ``createE2EContext(options)``: an Atlas, a Raw and a clock, wired together.

    Args:
        max_raw_size: Bytes the Raw may hold (``RawQuotaError`` past it); None: no limit.
        enable_logging: The Atlas and Raw log to the ``nexus.testing.e2e`` logger (else a
            logger that drops everything, so a test's output stays quiet).
        enable_metrics: Record their counters in ``ctx.metrics``.
        enable_tracing: Record their spans in ``ctx.tracer``.
        start: The clock's first reading (seconds since the epoch).
        tmp_dir: Use this directory (created if needed; still removed by ``cleanup``) instead
            of a new temporary one: pytest's ``tmp_path``, for instance.
    """
    clock = FixedClock(start)
    metrics = RecordingMetrics() if enable_metrics else None
    tracer = RecordingTracer() if enable_tracing else None
    if enable_logging:
        logger = logging.getLogger("nexus.testing.e2e")
    else:
        logger = logging.getLogger("nexus.testing.e2e.quiet")
        logger.propagate = False
        logger.addHandler(logging.NullHandler())
    if tmp_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="nexus-e2e-"))
    else:
        directory = Path(tmp_dir)
        directory.mkdir(parents=True, exist_ok=True)
    atlas = AtlasStore(clock=clock, metrics=metrics, tracer=tracer, logger=logger)
    raw = RawStorage(MemoryRaw(max_raw_size, clock=clock), metrics=metrics, tracer=tracer, logger=logger)
    return E2EContext(
        atlas=atlas,
        raw=raw,
        clock=clock,
        tmp_dir=directory,
        metrics=metrics,
        tracer=tracer,
        logger=logger if enable_logging else None,
    )


def generate_test_events(count: int, *, start: float = EPOCH, type: str = "test-event") -> list[dict[str, Any]]:
    """``count`` deterministic events: the same call gives the same list, byte for byte.

    Each is ``{"id": "event-<i>", "index": i, "type": type, "timestamp": <ms>, "data": {...}}``,
    one second apart from ``start``; ``data`` holds a value, a category (``a``/``b``/``c`` in
    turn) and a flag (every other event), something for a query to filter on.

    Raises:
        ValueError: ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    return [
        {
            "id": f"event-{i}",
            "index": i,
            "type": type,
            "timestamp": int((start + i) * 1000),
            "data": {"value": i * 10, "category": "abc"[i % 3], "even": i % 2 == 0},
        }
        for i in range(count)
    ]


def write_test_file(directory: str | os.PathLike[str], name: str, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``directory/name``, parents created; the file's path.

    Raises:
        ValueError: ``name`` is absolute or leaves ``directory`` (``..``).
    """
    base = Path(directory).resolve()
    target = (base / name).resolve()
    if Path(name).is_absolute() or not target.is_relative_to(base) or target == base:
        raise ValueError(f"{name!r} must be a relative file name inside the directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content.encode() if isinstance(content, str) else content)
    return target


def read_test_file(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes (seed 003's ``readTestFile``, a Buffer)."""
    return Path(path).read_bytes()
