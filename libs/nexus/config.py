"""Platform settings shared by every service and the command line, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value Nexus cannot use; the message names the variable."""


@dataclass(frozen=True)
class PlatformSettings:
    """What every Nexus process needs to find the platform (ARCHITECTURE.md, "Configuration")."""

    data_dir: Path
    """``NEXUS_DATA_DIR``: where the embedded defaults keep their files (default ``./.nexus``)."""
    event_log_url: str
    """``NEXUS_EVENT_LOG_URL``: ``sqlite:///PATH`` (default, under the data dir), ``mongodb://…``, ``memory://``."""
    raw_url: str
    """``NEXUS_RAW_URL``: ``file://PATH`` (default, under the data dir), ``memory://``, ``postgresql://…``,
    ``mongodb://…``."""
    nats_url: str | None
    """``NEXUS_NATS_URL``: an existing NATS server (a cluster's, comma-separated); unset starts the embedded one."""
    nats_port: int
    """``NEXUS_NATS_PORT``: port of the embedded nats-server (default 4222)."""
    nats_sync: str
    """``NEXUS_NATS_SYNC``: ``default`` (JetStream fsyncs lazily) or ``always``."""
    host: str
    """``NEXUS_HOST``: the address HTTP servers bind (default 127.0.0.1)."""
    log_level: str
    """``NEXUS_LOG_LEVEL``: debug, info, warning, error (default info)."""
    otel_exporter: str
    """``NEXUS_OTEL_EXPORTER``: none, console, otlp (default none)."""
    nats_user: str | None = None
    """``NEXUS_NATS_USER``: the NATS identity to connect as (``nexus up`` gives each process its own);
    unset, the ``nexus`` commands use the operator identity kept in ``<data dir>/nats/credentials.json``."""
    nats_password: str | None = field(default=None, repr=False)
    """``NEXUS_NATS_PASSWORD``: that identity's password (no default; required with ``NEXUS_NATS_USER``)."""
    nats_cluster: int = 1
    """``NEXUS_NATS_CLUSTER``: how many embedded nats-servers ``nexus up`` starts: 1 (default), or 3 as one
    JetStream cluster on loopback whose streams keep 3 copies (``nexus up --nats-cluster 3`` does the same)."""
    nats_cluster_port: int = 6222
    """``NEXUS_NATS_CLUSTER_PORT``: route port of the first node of that cluster (node n: this + n - 1; 0 picks
    free ports); its client ports follow ``NEXUS_NATS_PORT`` likewise."""
    nats_replicas: int | None = None
    """``NEXUS_NATS_REPLICAS``: copies of each Nexus stream and bucket in a JetStream cluster (1-5; ``nexus up``
    sets it for its processes); unset, new streams get one copy and existing ones keep theirs."""
    bus_accelerator: str = "auto"
    """``NEXUS_BUS_ACCELERATOR``: ``auto`` (the bus's fast path on the nats-py versions it was tested
    with, after its start-up check), ``on`` (on any version that passes the check) or ``off``
    (nats-py's public API only)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PlatformSettings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("NEXUS_DATA_DIR") or "./.nexus").expanduser()
        absolute = data_dir.resolve()
        nats_sync = env.get("NEXUS_NATS_SYNC", "default").lower()
        if nats_sync not in ("default", "always"):
            raise ConfigError(f"NEXUS_NATS_SYNC={nats_sync!r}: use 'default' or 'always'")
        otel = env.get("NEXUS_OTEL_EXPORTER", "none").lower()
        if otel not in ("none", "console", "otlp"):
            raise ConfigError(f"NEXUS_OTEL_EXPORTER={otel!r}: use 'none', 'console' or 'otlp'")
        level = env.get("NEXUS_LOG_LEVEL", "info").lower()
        if level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"NEXUS_LOG_LEVEL={level!r}: use debug, info, warning or error")
        accelerator = env.get("NEXUS_BUS_ACCELERATOR", "auto").lower()
        if accelerator not in ("auto", "on", "off"):
            raise ConfigError(f"NEXUS_BUS_ACCELERATOR={accelerator!r}: use 'auto', 'on' or 'off'")
        nats_cluster = env_int(env, "NEXUS_NATS_CLUSTER", 1)
        if nats_cluster not in (1, 3):
            raise ConfigError(
                f"NEXUS_NATS_CLUSTER={nats_cluster}: use 1 (one nats-server) or 3 (a JetStream cluster that "
                "survives the loss of one node)"
            )
        replicas = env.get("NEXUS_NATS_REPLICAS")
        nats_replicas = env_int(env, "NEXUS_NATS_REPLICAS", 1, low=1, high=5) if replicas else None
        nats_user = env.get("NEXUS_NATS_USER") or None
        nats_password = env.get("NEXUS_NATS_PASSWORD") or None
        if nats_user and not nats_password:
            raise ConfigError("NEXUS_NATS_USER is set but NEXUS_NATS_PASSWORD is not: set both, or neither")
        if nats_password and not nats_user:
            raise ConfigError("NEXUS_NATS_PASSWORD is set but NEXUS_NATS_USER is not: set both, or neither")
        return cls(
            data_dir=data_dir,
            event_log_url=env.get("NEXUS_EVENT_LOG_URL") or f"sqlite:///{absolute / 'events.db'}",
            raw_url=env.get("NEXUS_RAW_URL") or f"file://{absolute / 'raw'}",
            nats_url=env.get("NEXUS_NATS_URL") or None,
            nats_port=port_from_env(env, "NEXUS_NATS_PORT", 4222),
            nats_sync=nats_sync,
            nats_cluster=nats_cluster,
            nats_cluster_port=port_from_env(env, "NEXUS_NATS_CLUSTER_PORT", 6222),
            nats_replicas=nats_replicas,
            nats_user=nats_user,
            nats_password=nats_password,
            bus_accelerator=accelerator,
            host=env.get("NEXUS_HOST", "127.0.0.1"),
            log_level=level,
            otel_exporter=otel,
        )


def port_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    """An integer port from ``env[name]`` (0 picks a free one), with a clear error otherwise."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}={port} is out of range (0-65535)")
    return port


def env_int(env: Mapping[str, str], name: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
    """An integer setting ``env[name]`` within [low, high], ``default`` when unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    _check_range(name, value, low, high)
    return value


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
) -> float:
    """A number setting within [low, high] (and strictly greater than ``above``), ``default`` when unset."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if above is not None and not value > above:
        raise ConfigError(f"{name}={raw!r} must be greater than {above:g}")
    _check_range(name, value, low, high)
    return value


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'' if low is None else f'{low:g}'}-{'' if high is None else f'{high:g}'}"
        raise ConfigError(f"{name}={value:g} is out of range ({bounds})")
