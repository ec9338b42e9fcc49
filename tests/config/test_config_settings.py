"""Platform settings from the environment: defaults, and a clear error naming each bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.config import ConfigError, PlatformSettings, env_float, env_int


def test_defaults_are_the_embedded_platform_on_loopback(tmp_path: Path) -> None:
    settings = PlatformSettings.from_env({"NEXUS_DATA_DIR": str(tmp_path)})
    assert settings.event_log_url == f"sqlite:///{tmp_path.resolve() / 'events.db'}"
    assert settings.raw_url == f"file://{tmp_path.resolve() / 'raw'}"
    assert settings.nats_url is None
    assert (settings.nats_port, settings.host, settings.nats_sync) == (4222, "127.0.0.1", "default")
    assert (settings.log_level, settings.otel_exporter) == ("info", "none")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NEXUS_NATS_SYNC": "sometimes"}, "NEXUS_NATS_SYNC"),
        ({"NEXUS_OTEL_EXPORTER": "jaeger"}, "NEXUS_OTEL_EXPORTER"),
        ({"NEXUS_LOG_LEVEL": "loud"}, "NEXUS_LOG_LEVEL"),
        ({"NEXUS_NATS_PORT": "http"}, "NEXUS_NATS_PORT"),
        ({"NEXUS_NATS_PORT": "70000"}, "NEXUS_NATS_PORT"),
        ({"NEXUS_BUS_ACCELERATOR": "turbo"}, "NEXUS_BUS_ACCELERATOR"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        PlatformSettings.from_env(env)


def test_number_readers() -> None:
    env = {"A": "5", "B": "x", "C": "0", "D": "2.5"}
    assert env_int(env, "A", 1, low=1, high=10) == 5
    assert env_int(env, "MISSING", 7) == 7
    assert env_float(env, "D", 1.0, above=0) == 2.5
    with pytest.raises(ConfigError, match=r"B='x' is not an integer"):
        env_int(env, "B", 1)
    with pytest.raises(ConfigError, match=r"A=5 is out of range \(6-9\)"):
        env_int(env, "A", 1, low=6, high=9)
    with pytest.raises(ConfigError, match=r"C='0' must be greater than 0"):
        env_float(env, "C", 1.0, above=0)


def test_the_delegated_token_lifetime_is_a_bounded_setting() -> None:
    from nexus.config import ConfigError
    from nexus.services.workflow.settings import load_settings

    assert load_settings({}).delegation_ttl_seconds == 300.0
    assert load_settings({"NEXUS_WORKFLOW_DELEGATION_TTL_SECONDS": "60"}).delegation_ttl_seconds == 60.0
    for bad in ("0", "3601", "soon"):
        with pytest.raises(ConfigError, match="NEXUS_WORKFLOW_DELEGATION_TTL_SECONDS"):
            load_settings({"NEXUS_WORKFLOW_DELEGATION_TTL_SECONDS": bad})


def test_the_bus_accelerator_setting() -> None:
    assert PlatformSettings.from_env({}).bus_accelerator == "auto"
    assert PlatformSettings.from_env({"NEXUS_BUS_ACCELERATOR": "OFF"}).bus_accelerator == "off"
