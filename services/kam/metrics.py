"""KAM's Prometheus metrics (default registry, ``nexus_kam_…``): requests by status and costs.

Both are what the log holds (KAM's fold), read when Prometheus scrapes (``nexus.obs.FoldMetrics``):
after a restart the figures are the same, not counted again from the replay, and every replica
reports the whole platform's, so a dashboard takes the max over replicas. The cost total is a
counter because the ledger only grows; ``increase()`` over it is what was billed in a window.
"""

from __future__ import annotations

from collections.abc import Callable

from nexus.obs import FoldMetric, counts, fold_metrics
from nexus.services.kam.state import STATUSES, KamState

__all__ = ["STATE", "track"]


def _requests(state: KamState) -> dict[tuple[str, ...], float]:
    return counts((request.status for request in state.requests.values()), STATUSES)


def _costs(state: KamState) -> dict[tuple[str, ...], float]:
    totals: dict[tuple[str, ...], float] = {}
    for entry in state.ledger:
        key = (entry.currency, entry.kind)
        totals[key] = totals.get(key, 0.0) + entry.amount
    return totals


def _cost_entries(state: KamState) -> dict[tuple[str, ...], float]:
    return counts(entry.kind for entry in state.ledger)


STATE = fold_metrics(
    FoldMetric[KamState](
        "nexus_kam_requests",
        "Requests by status (pending, template_assigned, executing, completed, failed), as the log holds them.",
        ("status",),
        _requests,
    ),
    FoldMetric[KamState](
        "nexus_kam_costs",
        "Costs recorded in the ledger, by currency and kind (run, tokens, stage), in the currency's units.",
        ("currency", "kind"),
        _costs,
        kind="counter",
    ),
    FoldMetric[KamState](
        "nexus_kam_cost_entries",
        "Ledger entries recorded, by kind (run, tokens, stage).",
        ("kind",),
        _cost_entries,
        kind="counter",
    ),
)


def track(state: Callable[[], KamState]) -> Callable[[], None]:
    """Report the state ``state()`` returns on ``/metrics``; returns the function that stops it."""
    return STATE.track(state)
