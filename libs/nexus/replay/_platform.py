"""Opening the platform's log and Raw store from settings, for the operator commands."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

from nexus.config import PlatformSettings
from nexus.eventlog import EventLog, open_event_log
from nexus.fs import make_private_dir
from nexus.raw import RawBackend, open_raw


@contextlib.asynccontextmanager
async def open_platform(settings: PlatformSettings | None = None) -> AsyncIterator[tuple[EventLog, RawBackend]]:
    """The event log and Raw store named by ``NEXUS_EVENT_LOG_URL`` and ``NEXUS_RAW_URL``."""
    settings = settings or PlatformSettings.from_env()
    if settings.event_log_url.startswith("sqlite:") or settings.raw_url.startswith("file:"):
        await asyncio.to_thread(make_private_dir, settings.data_dir)
    log = await open_event_log(settings.event_log_url)
    try:
        raw = await open_raw(settings.raw_url)
        try:
            yield log, raw
        finally:
            await raw.close()
    finally:
        await log.close()


class ProgressLine:
    """A progress bar on stderr: redrawn in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, *, stream: TextIO | None = None, cadence: float = 5.0) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.cadence = 0.1 if self.tty else cadence
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, total: int, rate: float, remaining: float | None, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.cadence:
            return
        self._last = now
        fraction = min(done / total, 1.0) if total else 1.0
        eta = "--" if remaining is None else _duration(remaining)
        text = f"{self.label} {done:,}/{total:,} ({fraction:.0%}) {rate:,.0f} events/s, ETA {eta}"
        if self.tty:
            width = 24
            filled = int(fraction * width)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
