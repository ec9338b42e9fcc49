"""``python -m nexus.relay``: run the outbox relay until SIGTERM or SIGINT.

Settings come from the environment (``NEXUS_NATS_URL``, ``NEXUS_EVENT_LOG_URL``, …); with
``NEXUS_NATS_URL`` unset the embedded nats-server is started as for any service.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from nexus.bus import open_bus
from nexus.config import PlatformSettings
from nexus.eventlog import open_event_log
from nexus.relay._relay import Relay


async def main() -> None:
    settings = PlatformSettings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bus = await open_bus(settings, name="nexus-relay")
    log = await open_event_log(settings.event_log_url)
    relay = Relay(log, bus)
    try:
        await relay.start()
        print("relay started", flush=True)
        await stop.wait()
    finally:
        await relay.stop()
        await bus.close()
        await log.close()


if __name__ == "__main__":
    asyncio.run(main())
