"""``build_service``: the preamble every service's bootstrap shares, written once."""

from __future__ import annotations

import logging
from typing import Any

from nexus.bus import Bus
from nexus.eventlog import EventLog
from nexus.runtime._run import open_adapters
from nexus.runtime._service import Service
from nexus.runtime._settings import ServiceSettings

__all__ = ["build_service"]

logger = logging.getLogger("nexus.runtime")


async def build_service(
    settings: ServiceSettings,
    *,
    title: str,
    description: str,
    log: EventLog | None = None,
    bus: Bus | None = None,
    raw: Any = None,
    need_raw: bool = False,
) -> Service:
    """A Service on the adapters it needs: those injected, else opened from the settings' URLs.

    The composition root of a service starts with this and then installs its routes, consumers
    and hooks on the Service it returns::

        async def bootstrap(settings, *, log=None, bus=None, raw=None) -> Service:
            service = await build_service(settings, title="Nexus KAM", description="...",
                                          log=log, bus=bus, raw=raw)
            api.install(service)
            return service

    The Service closes its adapters when it stops. If the Service cannot be built, the adapters
    opened here are closed again; injected ones are the caller's and are left open.

    Args:
        settings: The service's settings (adapter URLs from ``settings.platform``).
        title: OpenAPI ``info.title``.
        description: OpenAPI ``info.description``.
        log: An event log to use instead of opening ``NEXUS_EVENT_LOG_URL``.
        bus: A bus to use instead of connecting to NATS.
        raw: A Raw store to use instead of opening ``NEXUS_RAW_URL``.
        need_raw: Open Raw when it was not injected (only services that keep blobs do).
    """
    adapters = await open_adapters(settings, log=log, bus=bus, raw=raw, need_raw=need_raw)
    try:
        return Service(
            settings, log=adapters.log, bus=adapters.bus, raw=adapters.raw, title=title, description=description
        )
    except BaseException:
        opened = [
            adapter
            for adapter, injected in ((adapters.raw, raw), (adapters.bus, bus), (adapters.log, log))
            if adapter is not None and injected is None
        ]
        for adapter in opened:
            try:
                await adapter.close()
            except Exception:
                logger.debug("closing %r after a failed build", adapter, exc_info=True)
        raise
