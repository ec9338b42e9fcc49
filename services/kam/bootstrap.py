"""KAM's composition root."""

from __future__ import annotations

from typing import Any

from nexus.auth import ensure_admin
from nexus.bus import Bus
from nexus.eventlog import EventLog
from nexus.runtime import Service, build_service
from nexus.services.kam import api
from nexus.services.kam.settings import KamSettings


async def bootstrap(
    settings: KamSettings, *, log: EventLog | None = None, bus: Bus | None = None, raw: Any = None
) -> Service:
    """Build KAM from its settings; adapters are opened from their URLs unless injected."""
    service = await build_service(
        settings,
        title="Nexus KAM",
        description="Key-account manager: clients, logins and sessions, API keys, requests, costs.",
        log=log,
        bus=bus,
        raw=raw,
    )
    api.install(service)

    @service.on_startup
    async def record_admin(service: Service) -> None:
        # KAM owns logins, so it records the bootstrap admin at first start (hash only).
        await ensure_admin(service.log, settings.admin_user, settings.admin_password, source="nexus/kam")

    return service
