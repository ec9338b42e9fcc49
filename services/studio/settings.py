"""Studio's settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from nexus.config import env_int
from nexus.runtime import ServiceSettings


@dataclass(frozen=True, kw_only=True)
class StudioSettings(ServiceSettings):
    """The runtime's settings plus the bounds of blobs and their deltas; content lives in Raw
    (``NEXUS_RAW_URL``)."""

    max_blob_bytes: int = 16 * 1024 * 1024
    """``NEXUS_STUDIO_MAX_BLOB_BYTES``: the largest content a version may hold (default 16 MiB).
    Over HTTP a JSON body is also bounded by ``NEXUS_MAX_BODY_BYTES``."""
    max_metadata_bytes: int = 64 * 1024
    """``NEXUS_STUDIO_MAX_METADATA_BYTES``: a version's metadata, JSON-encoded (it travels in events)."""
    max_delta_bytes: int = 64 * 1024
    """``NEXUS_STUDIO_MAX_DELTA_BYTES``: deltas larger than this, encoded, are recorded as a
    replace (a reference to the new content), so a version's event stays small."""
    max_diff_bytes: int = 1024 * 1024
    """``NEXUS_STUDIO_MAX_DIFF_BYTES``: content larger than this is not diffed (a replace
    instead): diffing grows faster than the content and must not stall a write."""


def load_settings(env: Mapping[str, str] | None = None) -> StudioSettings:
    """Studio's settings from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    return StudioSettings.from_env(
        "studio",
        env,
        max_blob_bytes=env_int(env, "NEXUS_STUDIO_MAX_BLOB_BYTES", 16 * 1024 * 1024, low=1),
        max_metadata_bytes=env_int(env, "NEXUS_STUDIO_MAX_METADATA_BYTES", 64 * 1024, low=256, high=256 * 1024),
        max_delta_bytes=env_int(env, "NEXUS_STUDIO_MAX_DELTA_BYTES", 64 * 1024, low=0, high=256 * 1024),
        max_diff_bytes=env_int(env, "NEXUS_STUDIO_MAX_DIFF_BYTES", 1024 * 1024, low=0),
    )
