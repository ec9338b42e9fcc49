"""Settings every service shares, read from the environment into a frozen dataclass."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from nexus.config import ConfigError, PlatformSettings, env_float, port_from_env

DEFAULT_PORTS: Mapping[str, int] = {"kam": 8081, "workflow": 8082, "granulator": 8083, "studio": 8084}
"""Each service's HTTP port when ``NEXUS_<NAME>_PORT`` is unset."""

SERVICES: tuple[str, ...] = tuple(DEFAULT_PORTS)
"""The four services, in the order ``nexus up`` starts them."""

RELAY_PORT = 8085
"""The relay process's HTTP port (health, readiness, metrics) when ``NEXUS_RELAY_PORT`` is unset."""

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def port_variable(name: str) -> str:
    """The variable that sets a service's port: ``kam`` → ``NEXUS_KAM_PORT``."""
    return f"NEXUS_{name.upper()}_PORT"


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """What the runtime needs to run one service. Services subclass it to add their own fields."""

    name: str
    """Service name: ``kam``, ``workflow``, ``granulator``, ``studio`` (or another for tests)."""
    host: str
    """``NEXUS_HOST``: address the HTTP server binds (default 127.0.0.1)."""
    port: int
    """``NEXUS_<NAME>_PORT``: HTTP port (defaults in DEFAULT_PORTS; 0 picks a free one)."""
    platform: PlatformSettings
    """Data dir, event log, NATS, Raw, logging and tracing settings."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """``NEXUS_MAX_BODY_BYTES``: larger request bodies get 413 (default 1 MiB)."""
    shutdown_timeout: float = 3.0
    """``NEXUS_SHUTDOWN_TIMEOUT``: seconds in-flight requests get to finish after SIGTERM."""
    restarts: int = 0
    """``NEXUS_RESTARTS``: set by the supervisor, how often it restarted this service (a metric)."""

    @classmethod
    def from_env(cls, name: str, env: Mapping[str, str] | None = None, **extra: Any) -> Self:
        """Read the shared settings of service ``name`` from ``env`` (default ``os.environ``).

        Args:
            name: The service name; selects ``NEXUS_<NAME>_PORT``.
            env: The environment to read.
            **extra: Values of the fields a subclass adds.

        Raises:
            ConfigError: a variable has a value Nexus cannot use (the message names it).
        """
        env = os.environ if env is None else env
        platform = PlatformSettings.from_env(env)
        max_body = env_float(env, "NEXUS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, above=0)
        restarts = env.get("NEXUS_RESTARTS", "0")
        if not restarts.isdigit():
            raise ConfigError(f"NEXUS_RESTARTS={restarts!r} is not a count")
        return cls(
            name=name,
            host=platform.host,
            port=port_from_env(env, port_variable(name), {**DEFAULT_PORTS, "relay": RELAY_PORT}.get(name, 0)),
            platform=platform,
            max_body_bytes=int(max_body),
            shutdown_timeout=env_float(env, "NEXUS_SHUTDOWN_TIMEOUT", 3.0, above=0),
            restarts=int(restarts),
            **extra,
        )


def service_urls(env: Mapping[str, str], host: str = "127.0.0.1") -> dict[str, str]:
    """The base URL of every service an ``api_call`` step may name.

    The four platform services at ``NEXUS_<NAME>_URL`` when it is set (where the service runs on
    another host: a Kubernetes Service, a compose service), else on this host at their
    ``NEXUS_<NAME>_PORT``; either way they stay the platform's own services (steps calling them
    carry a delegated token). ``core`` (seed 004's content service) is the granulator unless
    ``NEXUS_SERVICE_CORE`` names another; every ``NEXUS_SERVICE_<NAME>=URL`` adds (or overrides)
    ``<name>`` as an external service.
    """
    target = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    urls = {
        name: _base_url(env, f"NEXUS_{name.upper()}_URL")
        or f"http://{target}:{port_from_env(env, port_variable(name), default)}"
        for name, default in DEFAULT_PORTS.items()
    }
    urls["core"] = urls["granulator"]
    for key, value in env.items():
        if key.startswith("NEXUS_SERVICE_") and value:
            name = key[len("NEXUS_SERVICE_") :].lower()
            if not value.startswith(("http://", "https://")):
                raise ConfigError(f"{key}={value!r} must be an http:// or https:// base URL")
            urls[name] = value.rstrip("/")
    return urls


def _base_url(env: Mapping[str, str], variable: str) -> str | None:
    """``env[variable]`` as a base URL without its trailing slash, or None when unset or empty."""
    value = (env.get(variable) or "").strip()
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{variable}={value!r} must be an http:// or https:// base URL")
    return value.rstrip("/")
