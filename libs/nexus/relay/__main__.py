"""``python -m nexus.relay``: run the outbox relay and the external ingest until SIGTERM or SIGINT.

The two are the platform's own plumbing between the log and JetStream: the relay publishes
the log on ``nexus.evt.>`` (one replica at a time, by lease), and the ingest appends the
CloudEvents external producers publish on ``nexus.ext.>`` to the log (every replica shares its
durable consumer). ``nexus up`` runs one such process; scale it like any service.

Like the services, the process serves ``/healthz``, ``/readyz`` and ``/metrics`` (on
``NEXUS_RELAY_PORT``, 8085 by default; 0 picks a free one): ``/readyz`` answers 503 while the
relay keeps failing to publish (``relay`` names the last error), so an orchestrator sees a stuck
relay instead of a process that is merely alive, and ``nexus_relay_*`` metrics can be scraped,
with the streams' sizes and every durable consumer's lag as the server reports them
(``nexus_stream_*``, ``nexus.bus.StreamMonitor``).

Settings come from the environment (``NEXUS_NATS_URL``, ``NEXUS_EVENT_LOG_URL``, …); with
``NEXUS_NATS_URL`` unset the embedded nats-server is started as for any service. Logs are JSON
lines on stdout (``NEXUS_LOG_LEVEL``), as for the services.
"""

from __future__ import annotations

import logging

from nexus.bus import StreamMonitor
from nexus.ingest import ExtIngest
from nexus.relay._relay import Relay
from nexus.runtime import Service, ServiceSettings, build_service, run

logger = logging.getLogger("nexus.relay")


async def build(settings: ServiceSettings) -> Service:
    """The relay process as a Service: the relay and the ingest, with the platform endpoints."""
    service = await build_service(
        settings,
        title="Nexus relay",
        description="The outbox relay (log → nexus.evt.>) and the external ingest (nexus.ext.> → log).",
    )
    relay = Relay(service.log, service.bus)
    ingest = ExtIngest(service.bus, service.log)

    async def relaying() -> None:
        if not relay.healthy:
            raise RuntimeError(f"the relay keeps failing: {relay.last_error or 'no progress'}")

    service.readiness_check("relay", relaying)

    @service.background
    async def monitor_streams(service: Service) -> None:
        # The streams' sizes (the DLQ's among them) and every durable's lag, as the server sees them.
        await StreamMonitor(service.bus).run()

    @service.on_startup
    async def start(_: Service) -> None:
        await relay.start()
        await ingest.start()
        # Supervisors and tests wait for this line (INFO level or lower shows it).
        logger.info("relay started")

    @service.on_shutdown
    async def stop(_: Service) -> None:
        await ingest.stop()
        await relay.stop()

    return service


if __name__ == "__main__":
    raise SystemExit(run(build, lambda: ServiceSettings.from_env("relay")))
