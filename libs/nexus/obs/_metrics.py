"""The platform's Prometheus metrics, declared once in the default registry.

Names follow the Prometheus conventions: the ``nexus_`` prefix, base units (seconds, bytes),
``_total`` on counters, and labels of bounded cardinality only (a route template, never a path
or an id). Other modules (relay, consumers) declare theirs in the same default registry, so one
``/metrics`` endpoint per process shows them all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from opentelemetry import trace
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

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


S = TypeVar("S")


@dataclass(frozen=True)
class FoldMetric(Generic[S]):
    """One metric a ``FoldMetrics`` reads from the state a process folds from the log."""

    name: str
    """The metric's name (a counter's without ``_total``: the exposition adds it)."""
    documentation: str
    labels: tuple[str, ...]
    read: Callable[[S], Mapping[tuple[str, ...], float]]
    """The samples of one state: label values → value."""
    kind: Literal["gauge", "counter"] = "gauge"
    """``counter`` only for a figure that never decreases in the log (a sum of recorded costs)."""


class FoldMetrics(Collector, Generic[S]):
    """Metrics read at scrape time from the state a service folds from the log.

    What the log holds now (requests by status, the queue by priority) is the state itself, not
    something a process saw happen: counting it as it happens would count again at every start
    (the fold replays the log) and once per replica. Reading the state when Prometheus scrapes
    gives the same figure after a restart and on every replica, so a dashboard takes the ``max``
    over replicas. Several states tracked in one process (replicas side by side in a test) report
    the largest value per label set: each folds the same log, the furthest along is the truth.

    Register it once per process (``fold_metrics``) and ``track`` each state while it serves. The
    reads run where the scrape is rendered: the ``/metrics`` route, on the event loop's thread, so
    a fold never changes under them; keep each read proportional to what it reports.
    """

    def __init__(self, *metrics: FoldMetric[S]) -> None:
        self.metrics = metrics
        self._sources: list[Callable[[], S]] = []
        self._lock = threading.Lock()

    def track(self, source: Callable[[], S]) -> Callable[[], None]:
        """Report ``source()``'s state from now on; returns the function that stops it."""
        with self._lock:
            self._sources.append(source)

        def untrack() -> None:
            with self._lock:
                if source in self._sources:
                    self._sources.remove(source)

        return untrack

    def _family(self, metric: FoldMetric[S]) -> GaugeMetricFamily | CounterMetricFamily:
        if metric.kind == "counter":
            return CounterMetricFamily(metric.name, metric.documentation, labels=metric.labels)
        return GaugeMetricFamily(metric.name, metric.documentation, labels=metric.labels)

    def describe(self) -> Iterator[Metric]:
        # The names alone: the registry checks them for clashes without reading any state.
        for metric in self.metrics:
            yield self._family(metric)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            states = [source() for source in self._sources]
        for metric in self.metrics:
            family = self._family(metric)
            merged: dict[tuple[str, ...], float] = {}
            for state in states:
                for labels, value in metric.read(state).items():
                    merged[labels] = max(value, merged.get(labels, value))
            for labels, value in sorted(merged.items()):
                family.add_metric(list(labels), value)
            yield family


def fold_metrics(*metrics: FoldMetric[S]) -> FoldMetrics[S]:
    """A ``FoldMetrics`` registered in the default registry (so every ``/metrics`` shows it)."""
    collector = FoldMetrics(*metrics)
    REGISTRY.register(collector)
    return collector


def counts(values: Iterable[str], known: Sequence[str] = ()) -> dict[tuple[str, ...], float]:
    """How many times each value occurs, with a zero for each ``known`` value that does not.

    The zeros keep a series for every known status on a fresh platform, so a panel or an alert
    sees 0 rather than nothing.
    """
    result: dict[tuple[str, ...], float] = {(value,): 0.0 for value in known}
    for value in values:
        result[(value,)] = result.get((value,), 0.0) + 1
    return result


def render_metrics(accept: str = "") -> tuple[bytes, str]:
    """The default registry in the format the scraper's ``Accept`` header asks for, with its content type.

    ``application/openmetrics-text`` (Prometheus asks for it first) carries the histograms'
    exemplars, so a dashboard can go from a slow bucket to a trace; anything else gets the
    Prometheus text format, which has no exemplars.
    """
    encode, content_type = choose_encoder(accept)
    return encode(REGISTRY), content_type


def exemplar() -> dict[str, str] | None:
    """The exemplar of an observation made now: the current trace's id, when it is sampled.

    Pass it to ``Histogram.observe`` (``HISTOGRAM.observe(seconds, exemplar())``). An unsampled
    trace is exported nowhere, so pointing at it would lead a dashboard to nothing.
    """
    context = trace.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        return {"trace_id": format(context.trace_id, "032x")}
    return None
