"""Observability: Prometheus metrics, OpenTelemetry tracing and JSON logs for every process.

Correlation: within ``with correlation(request_id):`` every event ``new_event`` builds carries
``correlationid`` and every JSON log line ``correlation_id``; ``set_correlation_provider``
installs where the id comes from outside such a block (seed 003's ``CorrelationProvider``).
A workflow execution's driver runs inside its execution's correlation id.

Traces: an event appended without a ``traceparent`` carries its append span's
(``InstrumentedEventLog``), so whoever handles it later (the relay, a consumer, a log tail:
``parent_context(event.traceparent)``) continues the trace of what appended it; a workflow
execution records the trace of what started it and every step of it is a span of that trace.
Latency histograms take ``exemplar()`` (the sampled trace's id), shown to a scraper that asks
for OpenMetrics (``render_metrics(accept)``).

A service gets all three from ``nexus.runtime``; use this package directly to add a metric
(declare it in the default registry: it then appears on the service's ``/metrics``), to open a
span (``opentelemetry.trace.get_tracer(__name__)``), or to log (``logging.getLogger(__name__)``
with ``extra={"event_id": ...}`` where an event is concerned).
"""

from nexus.obs._eventlog import InstrumentedEventLog
from nexus.obs._logging import REDACTED, SECRET_FIELDS, JsonFormatter, RedactSecretsFilter, redact, setup_logging
from nexus.obs._metrics import (
    EVENT_LOG_APPEND_DURATION,
    EVENT_LOG_APPENDS,
    EVENTS_APPENDED,
    HTTP_REQUEST_DURATION,
    HTTP_REQUESTS,
    SERVICE_RESTARTS,
    FoldMetric,
    FoldMetrics,
    counts,
    exemplar,
    fold_metrics,
    render_metrics,
)
from nexus.obs._ratelog import Backoff, RateLimitedLog
from nexus.obs._tracing import (
    EXPORTERS,
    current_traceparent,
    extract_context,
    parent_context,
    setup_tracing,
)
from nexus.proto._correlation import (
    CORRELATION_ID,
    CorrelationProvider,
    check_correlation_id,
    correlation,
    current_correlation_id,
    set_correlation_provider,
)

__all__ = [
    "CORRELATION_ID",
    "EVENTS_APPENDED",
    "EVENT_LOG_APPENDS",
    "EVENT_LOG_APPEND_DURATION",
    "EXPORTERS",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "REDACTED",
    "SECRET_FIELDS",
    "SERVICE_RESTARTS",
    "Backoff",
    "CorrelationProvider",
    "FoldMetric",
    "FoldMetrics",
    "InstrumentedEventLog",
    "JsonFormatter",
    "RateLimitedLog",
    "RedactSecretsFilter",
    "check_correlation_id",
    "correlation",
    "counts",
    "current_correlation_id",
    "current_traceparent",
    "exemplar",
    "extract_context",
    "fold_metrics",
    "parent_context",
    "redact",
    "render_metrics",
    "set_correlation_provider",
    "setup_logging",
    "setup_tracing",
]
