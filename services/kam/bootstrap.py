"""KAM's composition root."""

from __future__ import annotations

from typing import Any

from nexus.auth import ensure_admin
from nexus.bus import Bus
from nexus.eventlog import EventLog
from nexus.runtime import Service, open_adapters
from nexus.services.kam import api
from nexus.services.kam.settings import KamSettings


async def bootstrap(
    settings: KamSettings, *, log: EventLog | None = None, bus: Bus | None = None, raw: Any = None
) -> Service:
    """Build KAM from its settings; adapters are opened from their URLs unless injected."""
    adapters = await open_adapters(settings, log=log, bus=bus, raw=raw)
    service = Service(
        settings,
        log=adapters.log,
        bus=adapters.bus,
        raw=adapters.raw,
        title="Nexus KAM",
        description="Key-account manager: clients, logins and sessions, API keys, requests, costs.",
    )
    api.install(service)

    @service.on_startup
    async def record_admin(service: Service) -> None:
        # KAM owns logins, so it records the bootstrap admin at first start (hash only).
        await ensure_admin(service.log, settings.admin_user, settings.admin_password, source="nexus/kam")

    return service
