"""The outbox relay: the event log is the outbox; the relay publishes it to NEXUS_EVT.

Run one per deployment (or several: they elect a leader through a KV lease)::

    relay = Relay(log, bus)
    await relay.start()
    ...
    await relay.stop()

or as a process: ``python -m nexus.relay`` (settings from the environment).
"""

from nexus.relay._relay import (
    DLQ_CONSUMER,
    LEASE_BUCKET,
    RELAY_BUCKET,
    Lease,
    Relay,
    last_relayed_position,
    undeliverable,
)

__all__ = ["DLQ_CONSUMER", "LEASE_BUCKET", "RELAY_BUCKET", "Lease", "Relay", "last_relayed_position", "undeliverable"]
