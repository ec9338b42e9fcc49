"""The granulator's settings, read from the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from nexus.config import ConfigError, env_float, env_int
from nexus.runtime import ServiceSettings

__all__ = ["GENERATORS", "OUTPUT_REFS", "VALIDATORS", "GranulatorSettings", "load_settings"]

GENERATORS = ("builtin", "http")
VALIDATORS = ("builtin", "http")
OUTPUT_REFS = ("raw", "tiered")


@dataclass(frozen=True, kw_only=True)
class GranulatorSettings(ServiceSettings):
    """Settings of one granulator replica."""

    replica_id: str
    """``NEXUS_GRANULATOR_REPLICA_ID``: this replica's name in the log (default host-pid). Set it to a
    stable value so a restarted replica finds the handshakes it still holds."""
    capacity: int = 8
    """``NEXUS_GRANULATOR_CAPACITY``: concurrent jobs this replica accepts."""
    max_memory_mb: int = 1024
    """``NEXUS_GRANULATOR_MAX_MEMORY_MB``: the most memory a handshake may be granted."""
    max_timeout_ms: int = 600_000
    """``NEXUS_GRANULATOR_MAX_TIMEOUT_MS``: the longest timeout a handshake may ask for."""
    lease_grace_ms: int = 60_000
    """``NEXUS_GRANULATOR_LEASE_GRACE_MS``: how long past its timeout an unacknowledged handshake holds capacity."""
    inline_limit: int = 1024
    """``NEXUS_GRANULATOR_INLINE_LIMIT``: outputs whose JSON is shorter stay inline; longer go to Raw."""
    generator: str = "builtin"
    """``NEXUS_GRANULATOR_GENERATOR``: ``builtin`` (offline) or ``http`` (OpenAI-compatible)."""
    http_url: str = ""
    """``NEXUS_GRANULATOR_HTTP_URL``: base URL of the chat-completions API (``…/v1``)."""
    http_model: str = ""
    """``NEXUS_GRANULATOR_HTTP_MODEL``: the model to ask for."""
    http_key: str | None = None
    """``NEXUS_GRANULATOR_HTTP_KEY``: bearer key for the endpoint; no default, sent only when set."""
    http_timeout_s: float = 60.0
    """``NEXUS_GRANULATOR_HTTP_TIMEOUT_S``: per request to the endpoint."""
    generate_auth: str = "worker"
    """``NEXUS_GRANULATOR_GENERATE_AUTH``: ``worker`` (the default: a worker token, which workflow
    replicas send on their ``api_call`` steps to platform services) or ``none`` for ``POST /generate``."""
    validation_enabled: bool = False
    """``NEXUS_GRANULATOR_VALIDATION``: validate when a handshake does not say (``on``/``off``)."""
    validation_level: int = 1
    validation_threshold: float = 80.0
    validation_max_retries: int = 2
    validator: str = "builtin"
    """``NEXUS_GRANULATOR_VALIDATOR``: ``builtin`` (offline, deterministic) or ``http`` (the
    OpenAI-compatible endpoint of ``NEXUS_GRANULATOR_HTTP_URL`` writes and grades the questions)."""
    validator_model: str = ""
    """``NEXUS_GRANULATOR_VALIDATOR_MODEL``: the model the http validator asks (default: the generator's)."""
    output_refs: str = "raw"
    """``NEXUS_GRANULATOR_OUTPUT_REFS``: ``raw`` (outputs over the inline limit as ``raw://``
    references) or ``tiered`` (seed 002's ``kv://granulator/…`` up to ``NEXUS_REF_KV_MAX``,
    ``r2://granulator/…`` above)."""


def load_settings(env: Mapping[str, str] | None = None) -> GranulatorSettings:
    """Read the settings; raise ConfigError naming the variable at fault."""
    env = os.environ if env is None else env
    generator = env.get("NEXUS_GRANULATOR_GENERATOR", "builtin").strip().lower() or "builtin"
    if generator not in GENERATORS:
        raise ConfigError(f"NEXUS_GRANULATOR_GENERATOR={generator!r}: use one of {', '.join(GENERATORS)}")
    http_url = env.get("NEXUS_GRANULATOR_HTTP_URL", "").strip()
    http_model = env.get("NEXUS_GRANULATOR_HTTP_MODEL", "").strip()
    if generator == "http" and not (http_url and http_model):
        raise ConfigError(
            "NEXUS_GRANULATOR_GENERATOR=http needs NEXUS_GRANULATOR_HTTP_URL and NEXUS_GRANULATOR_HTTP_MODEL"
        )
    validation = env.get("NEXUS_GRANULATOR_VALIDATION", "off").strip().lower()
    if validation not in ("on", "off", "true", "false", "1", "0"):
        raise ConfigError(f"NEXUS_GRANULATOR_VALIDATION={validation!r}: use on or off")
    validator = env.get("NEXUS_GRANULATOR_VALIDATOR", "builtin").strip().lower() or "builtin"
    if validator not in VALIDATORS:
        raise ConfigError(f"NEXUS_GRANULATOR_VALIDATOR={validator!r}: use one of {', '.join(VALIDATORS)}")
    validator_model = env.get("NEXUS_GRANULATOR_VALIDATOR_MODEL", "").strip()
    if validator == "http" and not (http_url and (validator_model or http_model)):
        raise ConfigError(
            "NEXUS_GRANULATOR_VALIDATOR=http needs NEXUS_GRANULATOR_HTTP_URL and a model "
            "(NEXUS_GRANULATOR_VALIDATOR_MODEL or NEXUS_GRANULATOR_HTTP_MODEL)"
        )
    output_refs = env.get("NEXUS_GRANULATOR_OUTPUT_REFS", "raw").strip().lower() or "raw"
    if output_refs not in OUTPUT_REFS:
        raise ConfigError(f"NEXUS_GRANULATOR_OUTPUT_REFS={output_refs!r}: use one of {', '.join(OUTPUT_REFS)}")
    generate_auth = env.get("NEXUS_GRANULATOR_GENERATE_AUTH", "worker").strip().lower() or "worker"
    if generate_auth not in ("worker", "none"):
        raise ConfigError(f"NEXUS_GRANULATOR_GENERATE_AUTH={generate_auth!r}: use worker or none")
    return GranulatorSettings.from_env(
        "granulator",
        env,
        replica_id=env.get("NEXUS_GRANULATOR_REPLICA_ID", "").strip() or f"{socket.gethostname()}-{os.getpid()}",
        capacity=env_int(env, "NEXUS_GRANULATOR_CAPACITY", 8, low=1, high=100_000),
        max_memory_mb=env_int(env, "NEXUS_GRANULATOR_MAX_MEMORY_MB", 1024, low=1, high=1_048_576),
        max_timeout_ms=env_int(env, "NEXUS_GRANULATOR_MAX_TIMEOUT_MS", 600_000, low=100, high=86_400_000),
        lease_grace_ms=env_int(env, "NEXUS_GRANULATOR_LEASE_GRACE_MS", 60_000, low=0, high=86_400_000),
        inline_limit=env_int(env, "NEXUS_GRANULATOR_INLINE_LIMIT", 1024, low=0, high=16 * 1024 * 1024),
        generator=generator,
        http_url=http_url,
        http_model=http_model,
        http_key=env.get("NEXUS_GRANULATOR_HTTP_KEY") or None,
        http_timeout_s=env_float(env, "NEXUS_GRANULATOR_HTTP_TIMEOUT_S", 60.0, low=0.1, high=3600.0),
        generate_auth=generate_auth,
        validation_enabled=validation in ("on", "true", "1"),
        validation_level=env_int(env, "NEXUS_GRANULATOR_VALIDATION_LEVEL", 1, low=1, high=3),
        validation_threshold=env_float(env, "NEXUS_GRANULATOR_VALIDATION_THRESHOLD", 80.0, low=0.0, high=100.0),
        validation_max_retries=env_int(env, "NEXUS_GRANULATOR_VALIDATION_MAX_RETRIES", 2, low=0, high=5),
        validator=validator,
        validator_model=validator_model or http_model,
        output_refs=output_refs,
    )
