"""KAM's settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from nexus.config import ConfigError, env_float, env_int
from nexus.runtime import ServiceSettings


@dataclass(frozen=True, kw_only=True)
class KamSettings(ServiceSettings):
    """The runtime's settings plus the bootstrap admin."""

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
    )
