"""KAM's composition root."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nexus.auth import ensure_admin
from nexus.bus import Bus
from nexus.eventlog import EventLog
from nexus.runtime import Service, build_service
from nexus.services.kam import accounts, console, delivery, metrics, operations, requests
from nexus.services.kam.context import KamContext
from nexus.services.kam.settings import KamSettings


async def bootstrap(
    settings: KamSettings, *, log: EventLog | None = None, bus: Bus | None = None, raw: Any = None
) -> Service:
    """Build KAM from its settings; adapters are opened from their URLs unless injected."""
    service = await build_service(
        settings,
        title="Nexus KAM",
        description=(
            "Key-account manager, the AI factory's front door (seed 002): clients, users, logins and "
            "sessions, API keys, requests, templates and their recommendation, execution through the "
            "workflow service, deliverables, a per-client cost ledger, notifications and audit."
        ),
        log=log,
        bus=bus,
        raw=raw,
        need_raw=True,
    )
    ctx = KamContext(service=service, settings=settings)
    accounts.install(ctx)
    requests.install(ctx)
    delivery.install(ctx)
    console.install(ctx)
    operations.install(ctx)

    @service.on_startup
    async def record_admin(service: Service) -> None:
        # KAM owns logins, so it records the bootstrap admin at first start (hash only).
        await ensure_admin(service.log, settings.admin_user, settings.admin_password, source="nexus/kam")

    untrack: list[Callable[[], None]] = []

    @service.on_startup
    async def load_state(service: Service) -> None:
        await ctx.load()
        # Requests by status and costs on /metrics, read from the fold while this replica runs.
        untrack.append(metrics.track(lambda: ctx.state))

    @service.on_shutdown
    async def stop_metrics(service: Service) -> None:
        while untrack:
            untrack.pop()()

    @service.background
    async def follow_log(service: Service) -> None:
        await ctx.follow()

    return service
