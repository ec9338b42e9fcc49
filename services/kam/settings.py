"""KAM's settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from nexus.config import ConfigError
from nexus.runtime import ServiceSettings


@dataclass(frozen=True, kw_only=True)
class KamSettings(ServiceSettings):
    """The runtime's settings plus the bootstrap admin."""

    admin_user: str = "admin"
    """``NEXUS_ADMIN_USER``: login name of the bootstrap admin (default ``admin``)."""
    admin_password: str | None = None
    """``NEXUS_ADMIN_PASSWORD``: unset → generated at first start, printed once, only its hash kept."""

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
    return KamSettings.from_env("kam", env, admin_user=user, admin_password=env.get("NEXUS_ADMIN_PASSWORD") or None)
