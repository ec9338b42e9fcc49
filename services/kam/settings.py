"""KAM's settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nexus.config import ConfigError, env_float, env_int, port_from_env
from nexus.runtime import RELAY_PORT, ServiceSettings, port_variable, service_urls


@dataclass(frozen=True, kw_only=True)
class KamSettings(ServiceSettings):
    """The runtime's settings plus the bootstrap admin, logins, sessions and the audit."""

    admin_user: str = "admin"
    """``NEXUS_ADMIN_USER``: login name of the bootstrap admin (default ``admin``)."""
    admin_password: str | None = None
    """``NEXUS_ADMIN_PASSWORD``: unset → generated at first start, printed once, only its hash kept."""
    login_failures_per_user: int = 5
    """``NEXUS_LOGIN_FAILURES_PER_USER``: failed logins allowed per user name and client address
    within the window before ``POST /v1/login`` answers 429."""
    login_failures_per_address: int = 20
    """``NEXUS_LOGIN_FAILURES_PER_ADDRESS``: failed logins allowed per client address (any user)
    within the window."""
    login_window_seconds: float = 60.0
    """``NEXUS_LOGIN_WINDOW_SECONDS``: the sliding window the two limits count over."""
    session_ttl_seconds: float = 86400.0
    """``NEXUS_KAM_SESSION_TTL_SECONDS``: a login session's absolute lifetime (default 24 h, the
    seed's); it is not extended by use, so a stolen token stops working at the latest then."""
    audit_flush_seconds: float = 0.5
    """``NEXUS_KAM_AUDIT_FLUSH_SECONDS``: how long audit records wait to be appended together
    (one append per batch instead of one per call); ``GET /api/audit`` and shutdown flush at once."""
    audit_index_max: int = 500_000
    """``NEXUS_KAM_AUDIT_INDEX_MAX``: audit records ``GET /api/audit`` keeps in memory (the newest;
    about 200 bytes each). Older records stay in stream ``kam-audit`` of the log."""

    orchestrators: tuple[str, ...] = ("orchestrator",)
    """``NEXUS_KAM_ORCHESTRATORS``: the workers (names of worker tokens, comma-separated) that may
    report an execution's end on ``POST /api/worker-sessions/{id}/complete``; any other worker
    token gets 403 (a granulator's token must not settle a client's bill)."""

    services: Mapping[str, str] = field(default_factory=dict)
    """Base URL of each service the console's gateway forwards to (``/svc/workflow/…``,
    ``/svc/studio/…``) and whose readiness it shows: the platform's services at their
    ``NEXUS_<NAME>_PORT``, or ``NEXUS_SERVICE_<NAME>=URL`` (the workflow service's variables),
    and ``relay`` at ``NEXUS_RELAY_PORT``."""

    # -- the template recommender (requests, templates and recommendation) --
    recommender: str = "builtin"
    """``NEXUS_KAM_RECOMMENDER``: ``builtin`` (deterministic, offline; the default) or ``openai`` (an
    OpenAI-compatible chat completions endpoint, falling back to builtin when it fails)."""
    openai_url: str | None = None
    """``NEXUS_KAM_OPENAI_URL``: the endpoint's base URL (``…/v1``); required with ``openai``."""
    openai_model: str = "gpt-4o-mini"
    """``NEXUS_KAM_OPENAI_MODEL``: the model asked."""
    openai_api_key: str | None = None
    """``NEXUS_KAM_OPENAI_API_KEY``: sent as a Bearer token when set; no default."""
    openai_timeout_seconds: float = 10.0
    """``NEXUS_KAM_OPENAI_TIMEOUT_SECONDS``: how long the model may take before builtin answers instead."""

    def __repr__(self) -> str:
        # The dataclass repr would print the password wherever settings are logged.
        shown = "<set>" if self.admin_password else None
        return f"KamSettings(name={self.name!r}, host={self.host!r}, port={self.port}, admin_password={shown})"


def load_settings(env: Mapping[str, str] | None = None) -> KamSettings:
    """KAM's settings from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    user = env.get("NEXUS_ADMIN_USER", "admin").strip()
    if not user:
        raise ConfigError("NEXUS_ADMIN_USER is empty: unset it (default 'admin') or name the admin")
    return KamSettings.from_env(
        "kam",
        env,
        admin_user=user,
        admin_password=env.get("NEXUS_ADMIN_PASSWORD") or None,
        login_failures_per_user=env_int(env, "NEXUS_LOGIN_FAILURES_PER_USER", 5, low=1),
        login_failures_per_address=env_int(env, "NEXUS_LOGIN_FAILURES_PER_ADDRESS", 20, low=1),
        login_window_seconds=env_float(env, "NEXUS_LOGIN_WINDOW_SECONDS", 60.0, above=0),
        session_ttl_seconds=env_float(env, "NEXUS_KAM_SESSION_TTL_SECONDS", 86400.0, above=0, high=31 * 86400.0),
        audit_flush_seconds=env_float(env, "NEXUS_KAM_AUDIT_FLUSH_SECONDS", 0.5, low=0, high=60),
        audit_index_max=env_int(env, "NEXUS_KAM_AUDIT_INDEX_MAX", 500_000, low=1000),
        orchestrators=_names(env, "NEXUS_KAM_ORCHESTRATORS", "orchestrator"),
        services=_services(env),
        **_recommender(env),
    )


def _services(env: Mapping[str, str]) -> dict[str, str]:
    """The services' base URLs (``service_urls``) and the relay's (health only)."""
    host = env.get("NEXUS_HOST", "127.0.0.1")
    urls = service_urls(env, host)
    target = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    urls.setdefault("relay", f"http://{target}:{port_from_env(env, port_variable('relay'), RELAY_PORT)}")
    return urls


def _names(env: Mapping[str, str], variable: str, default: str) -> tuple[str, ...]:
    """A comma-separated list of names (an empty one is refused: say which)."""
    names = tuple(n.strip() for n in env.get(variable, default).split(",") if n.strip())
    if not names:
        raise ConfigError(f"{variable} is empty: name at least one worker, comma-separated")
    return names


def _recommender(env: Mapping[str, str]) -> dict[str, Any]:
    """The recommender's settings (``NEXUS_KAM_RECOMMENDER`` and ``NEXUS_KAM_OPENAI_*``)."""
    kind = (env.get("NEXUS_KAM_RECOMMENDER") or "builtin").strip().lower()
    if kind not in ("builtin", "openai"):
        raise ConfigError(f"NEXUS_KAM_RECOMMENDER={kind!r}: use 'builtin' or 'openai'")
    url = (env.get("NEXUS_KAM_OPENAI_URL") or "").strip().rstrip("/") or None
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"NEXUS_KAM_OPENAI_URL={url!r} must be an http:// or https:// base URL")
    if kind == "openai" and url is None:
        raise ConfigError("NEXUS_KAM_RECOMMENDER=openai needs NEXUS_KAM_OPENAI_URL (the endpoint's base URL)")
    return {
        "recommender": kind,
        "openai_url": url,
        "openai_model": (env.get("NEXUS_KAM_OPENAI_MODEL") or "gpt-4o-mini").strip(),
        "openai_api_key": env.get("NEXUS_KAM_OPENAI_API_KEY") or None,
        "openai_timeout_seconds": env_float(env, "NEXUS_KAM_OPENAI_TIMEOUT_SECONDS", 10.0, above=0, high=300),
    }
