"""The bus: NATS JetStream (production and embedded default) or in memory (tests), one port."""

from nexus.bus._port import (
    Bus,
    BusError,
    BusUnavailableError,
    Consumer,
    ConsumerSpec,
    Delivery,
    Handler,
    PoisonMessageError,
    PublishAck,
    RetryableError,
)

__all__ = [
    "Bus",
    "BusError",
    "BusUnavailableError",
    "Consumer",
    "ConsumerSpec",
    "Delivery",
    "Handler",
    "PoisonMessageError",
    "PublishAck",
    "RetryableError",
]
