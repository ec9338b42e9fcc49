"""Studio's composition root."""

from __future__ import annotations

from typing import Any

from nexus.bus import Bus
from nexus.eventlog import EventLog
from nexus.runtime import Service, build_service
from nexus.services.studio import api, blobs, providers
from nexus.services.studio.context import StudioContext
from nexus.services.studio.settings import StudioSettings


async def bootstrap(
    settings: StudioSettings, *, log: EventLog | None = None, bus: Bus | None = None, raw: Any = None
) -> Service:
    """Build Studio from its settings; adapters are opened from their URLs unless injected."""
    service = await build_service(
        settings,
        title="Nexus Studio",
        description="Blobs with full version history, providers and their triggers, workflow outputs as deltas.",
        log=log,
        bus=bus,
        raw=raw,
        need_raw=True,
    )

    async def raw_answers() -> None:
        await service.raw.list("", None, 1)

    # Blobs are Studio's data: it is not ready while Raw does not answer.
    service.readiness_check("raw", raw_answers)
    # The console reaches the studio through KAM's gateway with the user's session.
    service.accept_sessions()
    api.install(service)
    ctx = StudioContext(service=service, settings=settings)
    blobs.install(ctx)
    providers.install(ctx)

    @service.on_startup
    async def load_state(service: Service) -> None:
        await ctx.fold.load()

    @service.background
    async def follow_log(service: Service) -> None:
        await ctx.fold.follow()

    return service
