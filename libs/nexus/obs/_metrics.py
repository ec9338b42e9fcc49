"""The platform's Prometheus metrics, declared once in the default registry.

Names follow the Prometheus conventions: the ``nexus_`` prefix, base units (seconds, bytes),
``_total`` on counters, and labels of bounded cardinality only (a route template, never a path
or an id). Other modules (relay, consumers) declare theirs in the same default registry, so one
``/metrics`` endpoint per process shows them all.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "nexus_http_requests",
    "HTTP requests served, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "nexus_http_request_duration_seconds",
    "Time to serve an HTTP request, by method, route template and status code.",
    ["method", "route", "status"],
)
EVENT_LOG_APPENDS = Counter(
    "nexus_event_log_appends",
    "Append calls on the event log, by outcome (ok, conflict, duplicate, error).",
    ["outcome"],
)
EVENTS_APPENDED = Counter(
    "nexus_events_appended",
    "Events written to the event log by this process.",
)
EVENT_LOG_APPEND_DURATION = Histogram(
    "nexus_event_log_append_duration_seconds",
    "Time of one append call on the event log (all outcomes).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SERVICE_RESTARTS = Counter(
    "nexus_service_restarts",
    "Times the supervisor restarted a service after it died, by service name.",
    ["service"],
)

RELAY_DEAD_LETTERED = Counter(
    "nexus_relay_events_dead_lettered",
    "Events of the log the relay could not publish on nexus.evt.> (too_large: over the server's max payload; "
    "bad_subject: no valid subject) and dead-lettered as a placeholder on nexus.dlq.relay, by reason. "
    "The events stay in the log; any increase deserves an alert.",
    ["reason"],
)
RELAY_FORGED_POSITIONS = Counter(
    "nexus_relay_forged_positions",
    "Messages on NEXUS_EVT (or a checkpoint) whose Nexus-Position does not match the log's event at that "
    "position, ignored when the relay resumed, by reason (out_of_range, mismatch, unreadable, checkpoint).",
    ["reason"],
)
RELAY_FAILURES = Counter(
    "nexus_relay_failures",
    "Times relaying stopped on an error (or the lease could not be taken) and was retried after a back-off.",
)
RELAY_HEALTHY = Gauge(
    "nexus_relay_healthy",
    "1 while the relay makes progress or stands by; 0 from a failed attempt until the next one makes progress.",
)


def render_metrics() -> tuple[bytes, str]:
    """The default registry in the Prometheus text format, with its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
