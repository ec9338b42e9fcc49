"""The bus: NATS JetStream (production and embedded default) or in memory (tests), one port.

A service gets a connected bus from its settings at the composition root::

    bus = await open_bus(PlatformSettings.from_env())
    consumer = await bus.consume(ConsumerSpec("workflow-reactor", STREAM_EVT, ("nexus.evt.kam.>",)), handler)
    ...
    await bus.close()  # stops consumers gracefully, then the embedded server if it started one
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus.bus._dispatch import DEAD_LETTER_HEADERS
from nexus.bus._monitor import StreamMonitor
from nexus.bus._port import (
    Bus,
    BusArgumentError,
    BusError,
    BusTimeoutError,
    BusUnavailableError,
    Consumer,
    ConsumerSpec,
    ConsumerState,
    Delivery,
    Handler,
    KeyValueBucket,
    KeyValueEntry,
    OutboundMessage,
    PendingAcks,
    PoisonMessageError,
    PublishAck,
    RetryableError,
    StoredMessage,
    StreamConfigError,
    StreamState,
)
from nexus.bus._streams import NEXUS_STREAMS, StreamSpec

if TYPE_CHECKING:
    from nexus.bus.jetstream import JetStreamBus
    from nexus.config import PlatformSettings

__all__ = [
    "DEAD_LETTER_HEADERS",
    "NEXUS_STREAMS",
    "Bus",
    "BusArgumentError",
    "BusError",
    "BusTimeoutError",
    "BusUnavailableError",
    "Consumer",
    "ConsumerSpec",
    "ConsumerState",
    "Delivery",
    "Handler",
    "KeyValueBucket",
    "KeyValueEntry",
    "OutboundMessage",
    "PendingAcks",
    "PoisonMessageError",
    "PublishAck",
    "RetryableError",
    "StoredMessage",
    "StreamConfigError",
    "StreamMonitor",
    "StreamSpec",
    "StreamState",
    "nats_credentials",
    "open_bus",
]


def nats_credentials(settings: PlatformSettings, *, identity: str = "operator") -> tuple[str, str] | None:
    """(user, password) to connect to NATS with.

    ``NEXUS_NATS_USER`` / ``NEXUS_NATS_PASSWORD`` when set; otherwise ``identity``'s credential
    from the embedded server's ``<data dir>/nats/credentials.json`` when that file exists (the
    ``nexus`` commands on the machine that runs ``nexus up``); otherwise None (a server without
    authorization, or a URL that carries its own credentials).
    """
    from nexus.bus.embedded import EmbeddedNatsError, load_credentials

    if settings.nats_user and settings.nats_password:
        return settings.nats_user, settings.nats_password
    try:
        users = load_credentials(settings.data_dir / "nats")["users"]
    except EmbeddedNatsError:
        return None
    password = users.get(identity)
    return (identity, password) if password else None


async def open_bus(settings: PlatformSettings, *, name: str = "nexus") -> JetStreamBus:
    """A connected JetStreamBus with the Nexus streams in place, for a service's composition root.

    With ``NEXUS_NATS_URL`` set (``settings.nats_url``) it connects there, as ``NEXUS_NATS_USER``
    with ``NEXUS_NATS_PASSWORD`` when they are set (``nexus up`` gives each process its own
    identity). Unset, it starts the
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

    # NEXUS_BUS_ACCELERATOR: auto, on or off (see JetStreamBus.connect).
    accelerator = settings.bus_accelerator
    if settings.nats_url:
        user, password = (settings.nats_user, settings.nats_password)
        return await JetStreamBus.connect(
            settings.nats_url,
            name=name,
            user=user,
            password=password,
            accelerator=accelerator,
            replicas=settings.nats_replicas,
        )
    server = EmbeddedNats(
        settings.data_dir / "nats", port=settings.nats_port, sync_always=settings.nats_sync == "always"
    )
    await server.start()
    try:
        # The process that starts the server owns it (and its data directory): it connects as
        # NEXUS_NATS_USER when given, else as the operator.
        user, password = nats_credentials(settings) or server.credentials()
        bus = await JetStreamBus.connect(server.url, name=name, user=user, password=password, accelerator=accelerator)
    except BaseException:
        await server.stop()
        raise
    bus.own(server)
    return bus
