"""Prometheus metrics of the bus, the relay and the ingest (default registry, no ids as labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PUBLISHED = Counter("nexus_bus_published_total", "Messages published to JetStream and acknowledged.", ["stream"])
CONSUMER_PROCESSED = Counter(
    "nexus_consumer_processed_total",
    "Messages a durable consumer finished with, by outcome (ack, retry, dead_letter).",
    ["consumer", "outcome"],
)
CONSUMER_LAG = Gauge(
    "nexus_consumer_lag_messages",
    "Messages still pending for a durable consumer, as JetStream last reported.",
    ["consumer"],
)
DEAD_LETTERS = Counter("nexus_dead_letters_total", "Messages a consumer sent to its dead-letter subject.", ["consumer"])
RELAY_PUBLISHED = Counter("nexus_relay_published_total", "Events the relay published and JetStream acknowledged.")
RELAY_DUPLICATES = Counter(
    "nexus_relay_duplicates_total", "Events the relay re-published that JetStream already held (de-duplicated)."
)
RELAY_LAG = Gauge("nexus_relay_lag_events", "Events appended to the log and not yet relayed.")
RELAY_POSITION = Gauge("nexus_relay_checkpoint_position", "Log position up to which every event is relayed.")
RELAY_LEADER = Gauge("nexus_relay_leader", "1 while this relay replica holds the lease and relays, else 0.")
INGESTED = Counter(
    "nexus_ingest_processed_total", "External messages the ingest finished with, by outcome.", ["outcome"]
)
COMMANDS = Counter("nexus_commands_processed_total", "Commands a service handled, by outcome.", ["service", "outcome"])
STREAM_MESSAGES = Gauge(
    "nexus_stream_messages",
    "Messages a JetStream stream holds now, as the server reports it (NEXUS_DLQ: dead letters awaiting a redrive).",
    ["stream"],
)
STREAM_BYTES = Gauge("nexus_stream_bytes", "Bytes a JetStream stream holds now, as the server reports it.", ["stream"])
STREAM_CONSUMER_PENDING = Gauge(
    "nexus_stream_consumer_pending_messages",
    "Messages of a stream not yet delivered to a durable consumer, as the server reports it (read by the relay "
    "process, so a consumer whose every replica is down still shows its lag).",
    ["stream", "consumer"],
)
STREAM_CONSUMER_ACK_PENDING = Gauge(
    "nexus_stream_consumer_ack_pending_messages",
    "Messages delivered to a durable consumer and not yet acknowledged, as the server reports it.",
    ["stream", "consumer"],
)
