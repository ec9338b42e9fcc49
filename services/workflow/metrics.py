"""The workflow service's Prometheus metrics (default registry, ``nexus_workflow_…``).

Two kinds. What a replica did (step attempts and their time, retries, executions it brought to
an end) is counted where it happened, once: the sum over replicas is the platform's figure.
What the log holds now (executions by status, the queue by priority, the oldest queued
execution's age) is read from the replica's execution view when Prometheus scrapes
(``nexus.obs.FoldMetrics``): every replica folds the whole log, so a dashboard takes the max.

The service a step calls is the ``target_service`` label: ``service`` is the label Prometheus's
scrape configuration gives every series of a process (deploy/prometheus/prometheus.yml).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import Counter, Histogram

from nexus.obs import FoldMetric, counts, exemplar, fold_metrics
from nexus.proto import CloudEvent
from nexus.services.workflow.context import STATUSES
from nexus.services.workflow.definitions import WorkflowDefinition
from nexus.services.workflow.handlers import parse_time
from nexus.services.workflow.view import ExecutionView

__all__ = [
    "EXECUTIONS_ENDED",
    "STEP_DURATION",
    "STEP_RETRIES",
    "count_stored",
    "observe_step",
    "track",
]

STEP_DURATION = Histogram(
    "nexus_workflow_step_duration_seconds",
    "Time of one step attempt (the call to the service, or the wait), by the service the step calls "
    "(target_service; 'none' for a wait), the step type and the outcome (ok, error).",
    ["target_service", "type", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
STEP_RETRIES = Counter(
    "nexus_workflow_step_retries",
    "Step attempts that failed with a retryable error and were scheduled again, by the service the step "
    "calls (target_service) and the step type.",
    ["target_service", "type"],
)
EXECUTIONS_ENDED = Counter(
    "nexus_workflow_executions_ended",
    "Executions this replica brought to an end, by outcome (completed, failed, compensated, cancelled, timed_out).",
    ["outcome"],
)

_ENDINGS = {
    f"nexus.workflow.execution.{outcome}": outcome
    for outcome in ("completed", "failed", "compensated", "cancelled", "timed_out")
}
_RETRYING = "nexus.workflow.step.retrying"


def observe_step(service: str, step_type: str, ok: bool, seconds: float) -> None:
    """Count one step attempt that ran to an outcome (an interrupted one is not counted)."""
    # Observed inside the attempt's span: the exemplar points at its trace.
    STEP_DURATION.labels(service or "none", step_type, "ok" if ok else "error").observe(seconds, exemplar())


def count_stored(events: Iterable[CloudEvent], workflow: WorkflowDefinition | None) -> None:
    """Count the endings and retries among events this replica just appended to the log.

    Called after the append succeeded, so an attempt that lost a race to another replica is
    not counted. ``workflow`` (when known) gives a retried step's service and type.
    """
    for event in events:
        outcome = _ENDINGS.get(event.type)
        if outcome is not None:
            EXECUTIONS_ENDED.labels(outcome).inc()
        elif event.type == _RETRYING and isinstance(event.data, dict):
            step = workflow.step(str(event.data.get("step_id"))) if workflow is not None else None
            if step is None:
                STEP_RETRIES.labels("none", "unknown").inc()
                continue
            acting = step.compensation if event.data.get("compensation") and step.compensation else step
            STEP_RETRIES.labels(acting.service or "none", acting.type).inc()


def _statuses(view: ExecutionView) -> dict[tuple[str, ...], float]:
    by_status = counts((), STATUSES)
    for status, number in view.status_counts.items():
        by_status[(status,)] = float(number)
    return by_status


def _queued_by_priority(view: ExecutionView) -> dict[tuple[str, ...], float]:
    # The queue, not every execution the view holds: a scrape costs what is waiting.
    return counts(str(state.priority) for state in view.queued())


def _oldest_queued_age(view: ExecutionView) -> dict[tuple[str, ...], float]:
    now = time.time()
    oldest = now
    for state in view.queued():
        if state.created_at:
            try:
                oldest = min(oldest, parse_time(state.created_at).timestamp())
            except ValueError:
                continue
    return {(): max(now - oldest, 0.0)}


STATE = fold_metrics(
    FoldMetric[ExecutionView](
        "nexus_workflow_executions",
        "Executions by status, as the log holds them (every replica reports the whole platform: take the max).",
        ("status",),
        _statuses,
    ),
    FoldMetric[ExecutionView](
        "nexus_workflow_queue_depth",
        "QUEUED executions by priority (0-100), as the log holds them (take the max over replicas).",
        ("priority",),
        _queued_by_priority,
    ),
    FoldMetric[ExecutionView](
        "nexus_workflow_queue_oldest_age_seconds",
        "Seconds the oldest QUEUED execution has waited (0 when none waits; take the max over replicas).",
        (),
        _oldest_queued_age,
    ),
)


def track(view: ExecutionView) -> Callable[[], None]:
    """Report ``view``'s executions and queue on ``/metrics``; returns the function that stops it."""
    return STATE.track(lambda: view)
