"""docker-compose.yml and deploy/ stay consistent with the code (no Docker engine is needed to check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

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
    text = (ROOT / "docker-compose.yml").read_text().lower()
    assert "password" not in text and "secret" not in text.replace("nothing here holds a secret", "")
