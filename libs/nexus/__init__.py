"""Nexus: an event-sourced workflow platform over NATS JetStream.

Libraries live in ``nexus.<lib>`` (eventlog, bus, relay, atlas, raw, proof, obs, runtime, cli,
client), the event catalogue in ``nexus.proto`` and the services in ``nexus.services``.
"""

__version__ = "0.1.0"
