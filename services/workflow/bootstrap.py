"""The workflow service's composition root."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nexus.bus import Bus
from nexus.eventlog import EventLog
from nexus.runtime import Service, build_service
from nexus.services.workflow import api, metrics
from nexus.services.workflow.context import CTX_KEY, WorkflowContext
from nexus.services.workflow.engine import WorkflowEngine
from nexus.services.workflow.identity import ServiceIdentity
from nexus.services.workflow.registry import WorkflowRegistry
from nexus.services.workflow.settings import WorkflowSettings
from nexus.services.workflow.view import ExecutionView

__all__ = ["bootstrap"]

logger = logging.getLogger("nexus.workflow")


async def bootstrap(
    settings: WorkflowSettings,
    *,
    log: EventLog | None = None,
    bus: Bus | None = None,
    raw: Any = None,
    optional_modules: bool = True,
) -> Service:
    """Build the workflow service from its settings; adapters are opened unless injected.

    At start it folds the log (definitions, executions, replica heartbeats), registers the
    bundled definitions that changed, issues the replica's worker token (``identity.py``: sent
    to the platform services ``api_call`` steps call, revoked at stop), follows the log, and
    starts driving executions: those left unfinished by an earlier run of this replica first.

    Args:
        settings: The service's settings.
        log: An event log to use instead of opening ``NEXUS_EVENT_LOG_URL``.
        bus: A bus to use instead of connecting to NATS.
        raw: A Raw store to use instead of opening ``NEXUS_RAW_URL``.
        optional_modules: Install the job API, uploads, triggers, phases and live updates when present.
    """
    service = await build_service(
        settings,
        title="Nexus workflow",
        description="YAML workflows run as durable, event-sourced executions.",
        log=log,
        bus=bus,
        raw=raw,
        need_raw=True,
    )
    # The console reaches the workflow service through KAM's gateway with the user's session.
    service.accept_sessions()
    registry = WorkflowRegistry(service.log, settings.services)
    view = ExecutionView(service.log)
    view.add_listener(registry.apply)
    engine = WorkflowEngine(
        service.log,
        registry,
        view,
        services=settings.services,
        bus=service.bus,
        replica_id=settings.replica_id,
        concurrency=settings.concurrency,
        lease_seconds=settings.lease_seconds,
        http_connections=settings.http_connections,
        platform_services=settings.platform_services,
    )
    ctx = WorkflowContext(
        settings=settings,
        log=service.log,
        bus=service.bus,
        raw=service.raw,
        engine=engine,
        registry=registry,
        views=view,
        logger=logger,
    )
    service.app[CTX_KEY] = ctx

    @service.on_startup
    async def load(_service: Service) -> None:
        await view.load()
        for directory in settings.bundled_dirs:
            names = await registry.register_directory(directory)
            logger.info("bundled definitions from %s: %s", directory, ", ".join(names) or "none")

    api.install(service, ctx)
    if optional_modules:
        installed = api.install_optional(service, ctx)
        logger.info("workflow modules installed: %s", ", ".join(installed) or "none")

    # Reports the view's executions and queue on /metrics while the replica runs.
    untrack: list[Callable[[], None]] = []

    @service.on_startup
    async def run_engine(_service: Service) -> None:
        # The identity exists before the first step runs: a platform service's worker route
        # (the granulator's /generate) accepts the replica's calls from the first one.
        engine.identity = await ServiceIdentity.issue(
            service.log, settings.replica_id, delegation_ttl_seconds=settings.delegation_ttl_seconds
        )
        view.start_tail()
        await engine.start_processing()
        untrack.append(metrics.track(view))

    @service.on_shutdown
    async def stop_engine(_service: Service) -> None:
        while untrack:
            untrack.pop()()
        await engine.stop_processing()
        await view.stop()
        if engine.identity is not None:
            await engine.identity.revoke(service.log)

    return service
