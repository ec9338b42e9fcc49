"""Opening adapters from URLs and running a service process (``python -m nexus.services.<name>``)."""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nexus.bus import Bus, BusError
from nexus.config import ConfigError
from nexus.eventlog import EventLog, EventLogError, open_event_log
from nexus.fs import restrict_umask
from nexus.obs import setup_logging, setup_tracing
from nexus.raw import RawError
from nexus.runtime._service import Service
from nexus.runtime._settings import ServiceSettings, port_variable

logger = logging.getLogger("nexus.runtime")

S = TypeVar("S", bound=ServiceSettings)

EXIT_STARTUP_FAILED = 1
EXIT_CONFIG = 2
EXIT_PORT_IN_USE = 3
"""Exit status of a service whose port is taken; the supervisor reports it instead of retrying."""


@dataclass
class Adapters:
    """The adapters a composition root hands to its Service."""

    log: EventLog
    bus: Bus
    raw: Any = None


async def open_bus(settings: ServiceSettings) -> Bus:
    """Connect to ``NEXUS_NATS_URL``, or start an embedded nats-server the bus owns (and stops).

    Raises:
        BusError: NATS cannot be reached, or the embedded server cannot start.
    """
    from nexus import bus

    return await bus.open_bus(settings.platform, name=f"nexus-{settings.name}")


async def open_raw(url: str) -> Any:
    """Open the Raw blob store named by ``NEXUS_RAW_URL``."""
    from nexus import raw

    return await raw.open_raw(url)


async def open_adapters(
    settings: ServiceSettings,
    *,
    log: EventLog | None = None,
    bus: Bus | None = None,
    raw: Any = None,
    need_raw: bool = False,
) -> Adapters:
    """Open, from the settings' URLs, each adapter that was not injected.

    This is the heart of every service's ``bootstrap``: tests inject ``memory://`` logs or a
    bus on a test server, production opens them from the environment. If opening one fails,
    those already opened here are closed again.

    Args:
        settings: The service's settings (URLs come from ``settings.platform``).
        log: An event log to use instead of opening ``NEXUS_EVENT_LOG_URL``.
        bus: A bus to use instead of connecting to NATS.
        raw: A Raw store to use instead of opening ``NEXUS_RAW_URL``.
        need_raw: Open Raw when it was not injected (only services that keep blobs do).
    """
    opened: list[Any] = []
    try:
        if log is None:
            log = await open_event_log(settings.platform.event_log_url)
            opened.append(log)
        if bus is None:
            bus = await open_bus(settings)
            opened.append(bus)
        if raw is None and need_raw:
            raw = await open_raw(settings.platform.raw_url)
            opened.append(raw)
    except BaseException:
        for adapter in reversed(opened):
            try:
                await adapter.close()
            except Exception:
                logger.debug("closing %r after a failed start", adapter, exc_info=True)
        raise
    return Adapters(log=log, bus=bus, raw=raw)


def run(bootstrap: Callable[[S], Awaitable[Service]], load_settings: Callable[[], S]) -> int:
    """Run one service process until SIGTERM/SIGINT; return its exit status.

    Sets up JSON logs and tracing from the settings, calls ``bootstrap(settings)``, serves,
    and stops gracefully. A service's ``__main__.py`` is one line::

        raise SystemExit(run(bootstrap, load_settings))
    """
    # A service started alone (not by `nexus up`) keeps its files private too.
    restrict_umask()
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"nexus: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.name, settings.platform.log_level)
    provider = setup_tracing(f"nexus-{settings.name}", settings.platform.otel_exporter)

    async def main() -> int:
        try:
            service = await bootstrap(settings)
        except (BusError, EventLogError, RawError, ConfigError) as exc:
            logger.error("%s cannot start: %s", settings.name, exc)
            return EXIT_STARTUP_FAILED
        try:
            await service.serve()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                logger.error(
                    "port %s on %s is already in use, so %s cannot start: stop the process that holds it "
                    "or set %s to another port",
                    settings.port,
                    settings.host,
                    settings.name,
                    port_variable(settings.name),
                )
                return EXIT_PORT_IN_USE
            raise
        return 0

    try:
        return asyncio.run(main())
    finally:
        provider.shutdown()
