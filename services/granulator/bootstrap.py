"""The granulator's composition root."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from nexus.bus import Bus
from nexus.eventlog import EventLog
from nexus.raw import RefPolicy
from nexus.runtime import Service, build_service
from nexus.services.granulator import api
from nexus.services.granulator.generators import BuiltinGenerator, Generator, HttpGenerator
from nexus.services.granulator.generators.http_validator import HttpValidator
from nexus.services.granulator.handlers import Limits
from nexus.services.granulator.model import ValidationConfig
from nexus.services.granulator.settings import GranulatorSettings
from nexus.services.granulator.validation import BuiltinValidator, Validator
from nexus.services.granulator.worker import Granulator

__all__ = ["WORKER_KEY", "bootstrap", "make_generator", "make_validator", "make_worker"]

WORKER_KEY: web.AppKey[Granulator] = web.AppKey("granulator_worker", Granulator)
"""``request.app[WORKER_KEY]`` is the replica's Granulator."""


def make_generator(settings: GranulatorSettings) -> Generator:
    """The generator ``NEXUS_GRANULATOR_GENERATOR`` names."""
    if settings.generator == "http":
        return HttpGenerator(
            settings.http_url, settings.http_model, key=settings.http_key, timeout_s=settings.http_timeout_s
        )
    return BuiltinGenerator()


def make_validator(settings: GranulatorSettings) -> Validator:
    """The validator ``NEXUS_GRANULATOR_VALIDATOR`` names."""
    if settings.validator == "http":
        return HttpValidator(
            settings.http_url, settings.validator_model, key=settings.http_key, timeout_s=settings.http_timeout_s
        )
    return BuiltinValidator()


def make_worker(settings: GranulatorSettings, *, log: EventLog, raw: Any, generator: Generator) -> Granulator:
    """A Granulator configured from the settings."""
    attempt_ms = 20 if generator.name == "builtin" else int(settings.http_timeout_s * 1000 / 4)
    limits = Limits(
        capacity=settings.capacity,
        max_memory_mb=settings.max_memory_mb,
        max_timeout_ms=settings.max_timeout_ms,
        attempt_ms=attempt_ms,
        lease_grace_ms=settings.lease_grace_ms,
    )
    return Granulator(
        log=log,
        raw=raw,
        generator=generator,
        limits=limits,
        replica_id=settings.replica_id,
        inline_limit=settings.inline_limit,
        default_validation=ValidationConfig(
            enabled=settings.validation_enabled,
            level=settings.validation_level,
            threshold=settings.validation_threshold,
            max_retries=settings.validation_max_retries,
        ),
        validator=make_validator(settings),
        output_refs=settings.output_refs,
        ref_policy=RefPolicy.from_env(),
    )


async def bootstrap(
    settings: GranulatorSettings,
    *,
    log: EventLog | None = None,
    bus: Bus | None = None,
    raw: Any = None,
    generator: Generator | None = None,
) -> Service:
    """Build the granulator service; adapters not injected are opened from the settings' URLs."""
    service = await build_service(
        settings,
        title="Nexus granulator",
        description="Content-structure worker: handshake, process, acknowledge (seed 002), and text expansion.",
        log=log,
        bus=bus,
        raw=raw,
        need_raw=True,
    )
    gen = generator if generator is not None else make_generator(settings)
    worker = make_worker(settings, log=service.log, raw=service.raw, generator=gen)
    service.app[WORKER_KEY] = worker
    service.accept_sessions()
    api.install(service, worker)

    @service.on_startup
    async def rebuild(service: Service) -> None:
        await worker.rebuild()

    @service.on_shutdown
    async def close_generator(service: Service) -> None:
        await gen.close()
        await worker.validator.close()

    service.worker = worker  # type: ignore[attr-defined]  # for tests and tools; routes use WORKER_KEY
    return service
