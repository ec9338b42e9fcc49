"""The granulator's Prometheus metrics (default registry, ``nexus_granulator_…``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CAPACITY",
    "GENERATOR_ERRORS",
    "HANDSHAKES",
    "JOBS_IN_PROGRESS",
    "OUTPUTS",
    "OUTPUT_BYTES",
    "PROCESS_DURATION",
    "VALIDATION_ACCURACY",
    "VALIDATION_RETRIES",
]

HANDSHAKES = Counter(
    "nexus_granulator_handshakes_total",
    "Handshakes by outcome: accepted, or the rejection code (over_capacity, requirement_out_of_bounds, …).",
    ["outcome"],
)
JOBS_IN_PROGRESS = Gauge(
    "nexus_granulator_jobs_in_progress",
    "Open handshakes holding capacity on this replica (accepted and not yet acknowledged or expired).",
    ["replica"],
)
CAPACITY = Gauge("nexus_granulator_capacity", "Concurrent jobs this replica accepts.", ["replica"])
PROCESS_DURATION = Histogram(
    "nexus_granulator_process_duration_seconds",
    "Time to process a job: input resolution, generation with validation, output storage.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
VALIDATION_ACCURACY = Histogram(
    "nexus_granulator_validation_accuracy_percent",
    "Accuracy percentage of every validated structure (each attempt).",
    buckets=(10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95, 100),
)
VALIDATION_RETRIES = Counter(
    "nexus_granulator_validation_retries_total",
    "Structures regenerated because validation scored them below the threshold.",
)
OUTPUTS = Counter("nexus_granulator_outputs_total", "Outputs by storage: inline or reference (Raw).", ["storage"])
OUTPUT_BYTES = Counter(
    "nexus_granulator_output_bytes_total", "Bytes of output by storage: inline or reference (Raw).", ["storage"]
)
GENERATOR_ERRORS = Counter(
    "nexus_granulator_generator_errors_total",
    "Generator failures by generator and kind (unavailable: retryable; invalid_output: not).",
    ["generator", "kind"],
)
