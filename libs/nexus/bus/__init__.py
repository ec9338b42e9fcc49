"""The bus: NATS JetStream (production and embedded default) or in memory (tests), one port.

A service gets a connected bus from its settings at the composition root::

    bus = await open_bus(PlatformSettings.from_env())
    consumer = await bus.consume(ConsumerSpec("workflow-reactor", STREAM_EVT, ("nexus.evt.kam.>",)), handler)
    ...
    await bus.close()  # stops consumers gracefully, then the embedded server if it started one
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus.bus._port import (
    Bus,
    BusError,
    BusTimeoutError,
    BusUnavailableError,
    Consumer,
    ConsumerSpec,
    Delivery,
    Handler,
    OutboundMessage,
    PoisonMessageError,
    PublishAck,
    RetryableError,
    StreamConfigError,
)

if TYPE_CHECKING:
    from nexus.bus.jetstream import JetStreamBus
    from nexus.config import PlatformSettings

__all__ = [
    "Bus",
    "BusError",
    "BusTimeoutError",
    "BusUnavailableError",
    "Consumer",
    "ConsumerSpec",
    "Delivery",
    "Handler",
    "OutboundMessage",
    "PoisonMessageError",
    "PublishAck",
    "RetryableError",
    "StreamConfigError",
    "open_bus",
]


async def open_bus(settings: PlatformSettings, *, name: str = "nexus") -> JetStreamBus:
    """A connected JetStreamBus with the Nexus streams in place, for a service's composition root.

    With ``NEXUS_NATS_URL`` set (``settings.nats_url``) it connects there. Unset, it starts the
    embedded nats-server (JetStream, store in ``<data dir>/nats``, 127.0.0.1 on
    ``NEXUS_NATS_PORT``, fsync on every write when ``NEXUS_NATS_SYNC=always``); ``bus.close()``
    then stops that server as well.

    Args:
        settings: the platform settings (``PlatformSettings.from_env()``).
        name: the client name the NATS server shows for this connection (e.g. the service name).

    Raises:
        EmbeddedNatsError: the embedded server could not start (e.g. the port is in use).
        BusUnavailableError: the server cannot be reached.
        StreamConfigError: a Nexus stream exists with settings that cannot be updated.
    """
    from nexus.bus.embedded import EmbeddedNats
    from nexus.bus.jetstream import JetStreamBus

    if settings.nats_url:
        return await JetStreamBus.connect(settings.nats_url, name=name)
    server = EmbeddedNats(
        settings.data_dir / "nats", port=settings.nats_port, sync_always=settings.nats_sync == "always"
    )
    await server.start()
    try:
        bus = await JetStreamBus.connect(server.url, name=name)
    except BaseException:
        await server.stop()
        raise
    bus.own(server)
    return bus
