"""The job API's, uploads' and triggers' settings are the workflow service's settings, read in one place."""

from __future__ import annotations

import pytest

from nexus.config import ConfigError
from nexus.services.workflow.settings import load_settings


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.public_url is None
    assert settings.sse_keepalive_seconds == 15.0
    assert settings.job_batch_limit == 500
    assert (settings.upload_ttl_seconds, settings.upload_max_bytes) == (900.0, 50 * 1024 * 1024)
    assert (settings.trigger_max_depth, settings.trigger_rate, settings.trigger_burst) == (8, 10.0, 100)


def test_values_from_the_environment() -> None:
    settings = load_settings(
        {
            "NEXUS_WORKFLOW_PUBLIC_URL": "https://nexus.example/",
            "NEXUS_JOB_SSE_KEEPALIVE": "2.5",
            "NEXUS_JOB_BATCH_LIMIT": "7",
            "NEXUS_UPLOAD_TTL_SECONDS": "60",
            "NEXUS_UPLOAD_MAX_BYTES": "1000",
            "NEXUS_TRIGGER_MAX_DEPTH": "3",
            "NEXUS_TRIGGER_RATE": "0.5",
            "NEXUS_TRIGGER_BURST": "2",
        }
    )
    assert settings.public_url == "https://nexus.example"
    assert settings.sse_keepalive_seconds == 2.5
    assert settings.job_batch_limit == 7
    assert (settings.upload_ttl_seconds, settings.upload_max_bytes) == (60.0, 1000)
    assert (settings.trigger_max_depth, settings.trigger_rate, settings.trigger_burst) == (3, 0.5, 2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NEXUS_JOB_SSE_KEEPALIVE", "0"),
        ("NEXUS_JOB_SSE_KEEPALIVE", "soon"),
        ("NEXUS_JOB_BATCH_LIMIT", "0"),
        ("NEXUS_JOB_BATCH_LIMIT", "1.5"),
        ("NEXUS_UPLOAD_TTL_SECONDS", "-1"),
        ("NEXUS_UPLOAD_MAX_BYTES", "0"),
        ("NEXUS_TRIGGER_MAX_DEPTH", "0"),
        ("NEXUS_TRIGGER_RATE", "0"),
        ("NEXUS_TRIGGER_BURST", "x"),
    ],
)
def test_a_bad_value_is_refused_at_start_naming_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})
