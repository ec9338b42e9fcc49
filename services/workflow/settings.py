"""The workflow service's settings, read from the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from nexus.config import ConfigError, env_float, env_int, port_from_env
from nexus.runtime import DEFAULT_PORTS, ServiceSettings, port_variable, service_urls

__all__ = ["BUNDLED_DIR", "WorkflowSettings", "load_settings", "platform_services", "service_urls"]

BUNDLED_DIR = Path(__file__).with_name("bundled")
"""The workflows and schemas that ship with Nexus (seed 004's examples)."""


def platform_services(env: Mapping[str, str]) -> frozenset[str]:
    """The names ``service_urls`` resolves to the platform's own services.

    The four services and ``core`` (the granulator), unless a ``NEXUS_SERVICE_<NAME>`` points the
    name elsewhere: that service is external, and the replica's worker token is not sent to it.
    """
    names = {*DEFAULT_PORTS, "core"}
    return frozenset(name for name in names if not env.get(f"NEXUS_SERVICE_{name.upper()}"))


@dataclass(frozen=True, kw_only=True)
class WorkflowSettings(ServiceSettings):
    """Settings of the workflow service (the shared ones plus the engine's)."""

    concurrency: int = 256
    """``NEXUS_WORKFLOW_CONCURRENCY``: executions this replica drives at once (the rest wait queued)."""
    replica_id: str = ""
    """``NEXUS_WORKFLOW_REPLICA_ID``: this replica's name (default ``<hostname>-<port>``). A replica
    restarted under the same name takes its own executions back at once instead of waiting for
    their lease to lapse."""
    lease_seconds: float = 10.0
    """``NEXUS_WORKFLOW_LEASE_SECONDS``: how long a silent replica keeps its executions before
    another takes them over."""
    bundled_dirs: tuple[Path, ...] = (BUNDLED_DIR,)
    """``NEXUS_WORKFLOW_BUNDLED``: directories (``:``-separated) whose ``schemas/*.yaml`` and
    ``workflows/*.yaml`` are registered at start; ``none`` registers nothing."""
    services: Mapping[str, str] = field(default_factory=dict)
    """Base URL of each service ``api_call`` steps may name (see ``service_urls``)."""
    http_connections: int = 200
    """``NEXUS_WORKFLOW_HTTP_CONNECTIONS``: open connections the step client may hold."""
    platform_services: frozenset[str] = frozenset()
    """Names in ``services`` that are the platform's own services (see ``platform_services``): steps
    calling them carry a delegated token for the execution's tenant; external
    ``NEXUS_SERVICE_<NAME>`` services get no credential."""
    delegation_ttl_seconds: float = 300.0
    """``NEXUS_WORKFLOW_DELEGATION_TTL_SECONDS``: how long a step's delegated token is valid
    (1-3600; short, since it is a bearer credential for the execution's tenant)."""
    public_url: str | None = None
    """``NEXUS_WORKFLOW_PUBLIC_URL``: base of the URLs the job API hands out (presigned uploads,
    files); unset: the URL the request came in on."""
    sse_keepalive_seconds: float = 15.0
    """``NEXUS_JOB_SSE_KEEPALIVE``: seconds of silence after which an event stream (job monitor,
    live updates) sends a keep-alive comment."""
    job_batch_limit: int = 500
    """``NEXUS_JOB_BATCH_LIMIT``: most jobs in one ``POST /job/batch``."""
    upload_signing_key: str = field(default="", repr=False)
    """``NEXUS_UPLOAD_SIGNING_KEY``: the key presigned upload URLs are signed with (at least 32
    characters, shared by the replicas); empty: a random key per process, so a URL works only on
    the replica that issued it."""
    upload_ttl_seconds: float = 900.0
    """``NEXUS_UPLOAD_TTL_SECONDS``: how long a presigned upload URL stays valid."""
    upload_max_bytes: int = 50 * 1024 * 1024
    """``NEXUS_UPLOAD_MAX_BYTES``: the largest file an upload URL accepts."""
    trigger_max_depth: int = 8
    """``NEXUS_TRIGGER_MAX_DEPTH``: the longest chain of trigger-started executions."""
    trigger_rate: float = 10.0
    """``NEXUS_TRIGGER_RATE``: starts per second each trigger may make, on average."""
    trigger_burst: int = 100
    """``NEXUS_TRIGGER_BURST``: starts a trigger may make at once before ``rate`` applies."""
    phase_auto_submit_confidence: Decimal = Decimal("0.85")
    """``NEXUS_PHASE_AUTO_SUBMIT_CONFIDENCE``: phase 4 submits a matched claim whose (adjusted)
    confidence is at least this (0-1), triggering phase 5 for it."""
    phase_prompt_confidence: Decimal = Decimal("0.50")
    """``NEXUS_PHASE_PROMPT_CONFIDENCE``: from this confidence up to the auto-submit one, phase 4
    asks the user to confirm (a smart prompt); below it the claim is held. Must be lower than
    the auto-submit threshold."""
    phase_rejection_penalty: Decimal = Decimal("0.05")
    """``NEXUS_PHASE_REJECTION_PENALTY``: how much each rejection of a claim type (phase 6)
    lowers the confidence later claims of that type are routed with."""
    phase_max_penalty: Decimal = Decimal("0.25")
    """``NEXUS_PHASE_MAX_PENALTY``: the most the rejections of one claim type lower it."""
    phase_fee_rate: Decimal = Decimal("0.20")
    """``NEXUS_PHASE_FEE_RATE``: the platform's fee on a payout (phase 7), 0-1, exact decimal."""
    anomaly_workflow: str = ""
    """``NEXUS_ANOMALY_WORKFLOW``: the workflow an anomaly runs when it names none (``workflowId``);
    empty: an anomaly must name its workflow."""
    anomaly_events: tuple[str, ...] = ("anomaly_detected",)
    """``NEXUS_ANOMALY_EVENTS``: the event names (``nexus.ext.<source>.<event>``, comma-separated)
    whose external events become jobs; ``none``: no external event does."""
    stream_token_ttl_seconds: float = 300.0
    """``NEXUS_STREAM_TOKEN_TTL_SECONDS``: how long a stream's ``?access_token=`` is valid (1-900)."""


def load_settings(env: Mapping[str, str] | None = None) -> WorkflowSettings:
    """Read the workflow service's settings.

    Raises:
        ConfigError: a variable has a value the service cannot use (the message names it).
    """
    env = os.environ if env is None else env
    port = port_from_env(env, port_variable("workflow"), DEFAULT_PORTS["workflow"])
    bundled_raw = env.get("NEXUS_WORKFLOW_BUNDLED")
    if bundled_raw is None or bundled_raw == "":
        bundled: tuple[Path, ...] = (BUNDLED_DIR,)
    elif bundled_raw.lower() == "none":
        bundled = ()
    else:
        bundled = tuple(Path(p).expanduser() for p in bundled_raw.split(":") if p)
    replica = env.get("NEXUS_WORKFLOW_REPLICA_ID") or (
        f"{socket.gethostname()}-{port}" if port else f"{socket.gethostname()}-{os.urandom(4).hex()}"
    )
    return WorkflowSettings.from_env(
        "workflow",
        env,
        concurrency=env_int(env, "NEXUS_WORKFLOW_CONCURRENCY", 256, low=1),
        replica_id=replica,
        lease_seconds=env_float(env, "NEXUS_WORKFLOW_LEASE_SECONDS", 10.0, above=0),
        bundled_dirs=bundled,
        services=service_urls(env, env.get("NEXUS_HOST", "127.0.0.1")),
        http_connections=env_int(env, "NEXUS_WORKFLOW_HTTP_CONNECTIONS", 200, low=1),
        platform_services=platform_services(env),
        delegation_ttl_seconds=env_float(env, "NEXUS_WORKFLOW_DELEGATION_TTL_SECONDS", 300.0, low=1, high=3600),
        public_url=(env.get("NEXUS_WORKFLOW_PUBLIC_URL") or "").strip().rstrip("/") or None,
        sse_keepalive_seconds=env_float(env, "NEXUS_JOB_SSE_KEEPALIVE", 15.0, above=0),
        job_batch_limit=env_int(env, "NEXUS_JOB_BATCH_LIMIT", 500, low=1),
        upload_signing_key=_signing_key(env),
        upload_ttl_seconds=env_float(env, "NEXUS_UPLOAD_TTL_SECONDS", 900.0, above=0),
        upload_max_bytes=env_int(env, "NEXUS_UPLOAD_MAX_BYTES", 50 * 1024 * 1024, low=1),
        trigger_max_depth=env_int(env, "NEXUS_TRIGGER_MAX_DEPTH", 8, low=1),
        trigger_rate=env_float(env, "NEXUS_TRIGGER_RATE", 10.0, above=0),
        trigger_burst=env_int(env, "NEXUS_TRIGGER_BURST", 100, low=1),
        anomaly_workflow=(env.get("NEXUS_ANOMALY_WORKFLOW") or "").strip(),
        anomaly_events=_names(env.get("NEXUS_ANOMALY_EVENTS"), ("anomaly_detected",)),
        stream_token_ttl_seconds=env_float(env, "NEXUS_STREAM_TOKEN_TTL_SECONDS", 300.0, low=1, high=900),
        **_phase_rules(env),
    )


def _fraction(env: Mapping[str, str], name: str, default: str) -> Decimal:
    """A decimal setting from 0 to 1, read exactly (``0.85``, not the binary float nearest it)."""
    raw = (env.get(name) or "").strip() or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name}={raw!r} is not a decimal number") from None
    if not value.is_finite() or not Decimal(0) <= value <= Decimal(1):
        raise ConfigError(f"{name}={raw!r} must be a decimal from 0 to 1")
    return value


def _phase_rules(env: Mapping[str, str]) -> dict[str, Decimal]:
    """Seed 001's phase thresholds and rates (``NEXUS_PHASE_*``), checked against each other."""
    rules = {
        "phase_auto_submit_confidence": _fraction(env, "NEXUS_PHASE_AUTO_SUBMIT_CONFIDENCE", "0.85"),
        "phase_prompt_confidence": _fraction(env, "NEXUS_PHASE_PROMPT_CONFIDENCE", "0.50"),
        "phase_rejection_penalty": _fraction(env, "NEXUS_PHASE_REJECTION_PENALTY", "0.05"),
        "phase_max_penalty": _fraction(env, "NEXUS_PHASE_MAX_PENALTY", "0.25"),
        "phase_fee_rate": _fraction(env, "NEXUS_PHASE_FEE_RATE", "0.20"),
    }
    if rules["phase_prompt_confidence"] >= rules["phase_auto_submit_confidence"]:
        raise ConfigError(
            "NEXUS_PHASE_PROMPT_CONFIDENCE must be lower than NEXUS_PHASE_AUTO_SUBMIT_CONFIDENCE "
            f"({rules['phase_prompt_confidence']} >= {rules['phase_auto_submit_confidence']})"
        )
    return rules


def _names(raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of names (``none``: empty; unset: ``default``)."""
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() == "none":
        return ()
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _signing_key(env: Mapping[str, str]) -> str:
    configured = env.get("NEXUS_UPLOAD_SIGNING_KEY", "")
    if configured and len(configured) < 32:
        raise ConfigError("NEXUS_UPLOAD_SIGNING_KEY must be at least 32 characters (use a random value)")
    return configured
