"""Studio's settings, read from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nexus.runtime import ServiceSettings


@dataclass(frozen=True, kw_only=True)
class StudioSettings(ServiceSettings):
    """The runtime's settings; blobs live in Raw (``NEXUS_RAW_URL``)."""


def load_settings(env: Mapping[str, str] | None = None) -> StudioSettings:
    """Studio's settings from ``env`` (default ``os.environ``)."""
    return StudioSettings.from_env("studio", env)
