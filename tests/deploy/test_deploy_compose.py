"""docker-compose.yml and deploy/ stay consistent with the code (no Docker engine is needed to check)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from nexus.bus.embedded import IDENTITIES, find_nats_server, render_authorization

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_command_names_a_runnable_module() -> None:
    services = _compose()["services"]
    modules = [s["command"][0] for s in services.values() if s.get("build")]
    assert {
        "nexus.services.kam",
        "nexus.services.workflow",
        "nexus.services.granulator",
        "nexus.services.studio",
        "nexus.relay",
    } <= set(modules)
    for module in modules:
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{module} does not exist"
        main = importlib.util.find_spec(f"{module}.__main__")
        assert main is not None, f"{module} has no __main__ (python -m {module} would fail)"


def test_mounted_files_exist_and_published_ports_are_loopback_only() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_the_event_log_runs_on_a_replica_set_and_nothing_has_a_secret() -> None:
    compose = _compose()
    env = compose["x-nexus"]["environment"]
    assert "replicaSet=nexus" in env["NEXUS_EVENT_LOG_URL"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "secret" not in text.lower().replace("nothing here holds a secret", "")
    # Every password is a reference to a variable that must be set (no default), never a value.
    for line in text.splitlines():
        if "PASSWORD:" in line:
            value = line.split(":", 1)[1].strip()
            assert re.fullmatch(r"\$\{NEXUS_NATS_[A-Z]+_PASSWORD:\?[^}]+\}", value), line


def test_every_service_connects_to_nats_as_its_own_identity() -> None:
    compose = _compose()
    for name in ("kam", "workflow", "granulator", "studio", "relay"):
        env = compose["services"][name]["environment"]
        assert env["NEXUS_NATS_USER"] == name
        assert env["NEXUS_NATS_PASSWORD"] == f"${{NEXUS_NATS_{name.upper()}_PASSWORD:?see deploy/nexus.env.example}}"
        assert env["NEXUS_EVENT_LOG_URL"] == compose["x-nexus"]["environment"]["NEXUS_EVENT_LOG_URL"]
    example = (ROOT / "deploy" / "nexus.env.example").read_text()
    nats_env = compose["x-nats"]["environment"]
    for identity in IDENTITIES:
        variable = f"NEXUS_NATS_{identity.upper()}_PASSWORD"
        assert f"\n{variable}=\n" in example and variable in nats_env


NATS_CONFIGS = sorted((ROOT / "deploy" / "nats").glob("*.conf"))


def _password_variables() -> dict[str, str]:
    return {name: f"$NEXUS_NATS_{name.upper()}_PASSWORD" for name in IDENTITIES}


@pytest.mark.parametrize("config", NATS_CONFIGS, ids=lambda path: path.name)
def test_production_nats_has_the_embedded_users_and_permissions_and_no_secret(config: Path) -> None:
    text = config.read_text()
    # The same users and subjects as the embedded server, from the same table, passwords only
    # as environment references; no anonymous access.
    assert render_authorization(_password_variables()) in text
    settings = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert settings.count("authorization {") == 1 and "no_auth_user" not in settings
    assert not re.search(r"password:\s*[\"']", settings), "a literal password in the production configuration"
    # TLS is documented in the file.
    assert "tls {" in text


@pytest.mark.parametrize("config", NATS_CONFIGS, ids=lambda path: path.name)
def test_production_nats_configuration_is_accepted_by_nats_server(config: Path) -> None:
    # nats-server -t parses the file (variables resolved from the environment) without starting.
    env = {**os.environ, **{variable[1:]: "test-only" for variable in _password_variables().values()}}
    result = subprocess.run(
        [str(find_nats_server()), "-c", str(config), "-t"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Without the variables it refuses to start: no password has a default.
    bare = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_NATS_")}
    result = subprocess.run(
        [str(find_nats_server()), "-c", str(config), "-t"], env=bare, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0 and "NEXUS_NATS_" in result.stdout + result.stderr
