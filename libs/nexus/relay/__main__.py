"""``python -m nexus.relay``: run the outbox relay and the external ingest until SIGTERM or SIGINT.

The two are the platform's own plumbing between the log and JetStream: the relay publishes
the log on ``nexus.evt.>`` (one replica at a time, by lease), and the ingest appends the
CloudEvents external producers publish on ``nexus.ext.>`` to the log (every replica shares its
durable consumer). ``nexus up`` runs one such process; scale it like any service.

Settings come from the environment (``NEXUS_NATS_URL``, ``NEXUS_EVENT_LOG_URL``, …); with
``NEXUS_NATS_URL`` unset the embedded nats-server is started as for any service. Logs are JSON
lines on stdout (``NEXUS_LOG_LEVEL``), as for the services.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from nexus.bus import open_bus
from nexus.config import PlatformSettings
from nexus.eventlog import open_event_log
from nexus.ingest import ExtIngest
from nexus.obs import setup_logging
from nexus.relay._relay import Relay

logger = logging.getLogger("nexus.relay")


async def main() -> None:
    settings = PlatformSettings.from_env()
    setup_logging("relay", settings.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bus = await open_bus(settings, name="nexus-relay")
    log = await open_event_log(settings.event_log_url)
    relay = Relay(log, bus)
    ingest = ExtIngest(bus, log)
    try:
        await relay.start()
        await ingest.start()
        # Supervisors and tests wait for this line (INFO level or lower shows it).
        logger.info("relay started")
        await stop.wait()
    finally:
        await ingest.stop()
        await relay.stop()
        await bus.close()
        await log.close()


if __name__ == "__main__":
    asyncio.run(main())
