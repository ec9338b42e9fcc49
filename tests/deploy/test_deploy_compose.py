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
            assert re.fullmatch(r"\$\{NEXUS_(NATS_[A-Z]+|GRAFANA_ADMIN|POSTGRES)_PASSWORD:\?[^}]+\}", value), line


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
    # One client authorization block at the top level (the routes' own is indented in cluster {}).
    assert settings.count("\nauthorization {") == 1 and "no_auth_user" not in settings
    assert not re.search(r"password:\s*[\"']", settings), "a literal password in the production configuration"
    # TLS is documented in the file.
    assert "tls {" in text


@pytest.mark.parametrize("config", NATS_CONFIGS, ids=lambda path: path.name)
def test_production_nats_configuration_is_accepted_by_nats_server(config: Path) -> None:
    # nats-server -t parses the file (variables resolved from the environment) without starting.
    env = {**os.environ, **{variable[1:]: "test-only" for variable in _password_variables().values()}}
    # The routes' password, and their URLs as docker-compose.yml builds them.
    env |= {"NEXUS_NATS_ROUTE_PASSWORD": "test-only"}
    env |= {f"NEXUS_NATS_ROUTE_{n}": f"nats-route://route:test-only@nats-{n}:6222" for n in (1, 2, 3)}
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


# -- Prometheus and Grafana ----------------------------------------------------------------------

PORTS = {"kam": 8081, "workflow": 8082, "granulator": 8083, "studio": 8084, "relay": 8085}


def test_prometheus_scrapes_every_service_on_its_port_with_a_service_label_and_loads_the_rules() -> None:
    from nexus.runtime import ServiceSettings

    compose = _compose()
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        # Every replica is found by DNS (compose answers with each replica's address) and labelled.
        assert [r["target_label"] for r in job["relabel_configs"]] == ["service"], job["job_name"]
        for sd in job["dns_sd_configs"]:
            (name,) = sd["names"]
            scraped[name] = sd["port"]
    assert scraped == PORTS
    for name, port in PORTS.items():
        # The port Prometheus scrapes is the one the service listens on by default, and the
        # compose service of that name runs it.
        assert ServiceSettings.from_env(name, {}).port == port
        assert name in compose["services"]
    prometheus = compose["services"]["prometheus"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in prometheus["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert config["rule_files"] == ["rules/nexus.rules.yml"]


def test_grafana_is_provisioned_and_its_admin_password_has_no_default() -> None:
    compose = _compose()
    grafana = compose["services"]["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${NEXUS_GRAFANA_ADMIN_PASSWORD:?see deploy/nexus.env.example}"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "\nNEXUS_GRAFANA_ADMIN_PASSWORD=\n" in (ROOT / "deploy" / "nexus.env.example").read_text()
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    assert (ROOT / "deploy" / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).exists()
    assert "prometheus" in grafana["depends_on"]


# -- the PostgreSQL variant ----------------------------------------------------------------------

MONGO_URL = "mongodb://mongo-1:27017,mongo-2:27017,mongo-3:27017/nexus?replicaSet=nexus"


def _env_example() -> dict[str, str]:
    """The example's variables, commented-out ones included (``# NAME=value``)."""
    found = {}
    for line in (ROOT / "deploy" / "nexus.env.example").read_text().splitlines():
        match = re.fullmatch(r"#? ?(NEXUS_[A-Z_]+)=(.*)", line)
        if match:
            found[match[1]] = match[2]
    return found


def test_the_postgresql_variant_is_a_profile_whose_password_has_no_default() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]
    # Started only with --profile postgres; data on its own volume, where PostgreSQL 18's image keeps it.
    assert postgres["profiles"] == ["postgres"]
    assert postgres["image"].startswith("postgres:18")
    assert postgres["volumes"] == ["postgres:/var/lib/postgresql"] and "postgres" in compose["volumes"]
    assert "ports" not in postgres, "PostgreSQL stays on the compose network"
    env = postgres["environment"]
    assert env["POSTGRES_PASSWORD"] == "${NEXUS_POSTGRES_PASSWORD:?see deploy/nexus.env.example}"
    assert _env_example()["NEXUS_POSTGRES_PASSWORD"] == ""
    # The services wait until it accepts connections, when it runs at all.
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert f"--username {env['POSTGRES_USER']} --dbname {env['POSTGRES_DB']}" in " ".join(
        postgres["healthcheck"]["test"]
    )
    assert compose["x-nexus"]["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}


def test_the_event_log_url_is_mongodb_unless_the_operator_names_postgresql() -> None:
    from nexus.eventlog.postgres import PostgresOptions

    env = _compose()["x-nexus"]["environment"]
    # Compose takes NEXUS_EVENT_LOG_URL from deploy/nexus.env when it is set there, else MongoDB.
    assert env["NEXUS_EVENT_LOG_URL"] == f"${{NEXUS_EVENT_LOG_URL:-{MONGO_URL}}}"
    assert env["NEXUS_RAW_URL"] == f"${{NEXUS_RAW_URL:-{MONGO_URL}}}"
    # The example's PostgreSQL URL names the compose service, its user and database, and the
    # password by reference; with a (test) password in place it is a URL the event log accepts.
    postgres = _compose()["services"]["postgres"]["environment"]
    url = _env_example()["NEXUS_EVENT_LOG_URL"]
    user, database = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
    assert url == f"postgresql://{user}:${{NEXUS_POSTGRES_PASSWORD}}@postgres:5432/{database}"
    options = PostgresOptions.from_url(url.replace("${NEXUS_POSTGRES_PASSWORD}", "test-only_Pa55"))
    assert "host=postgres" in options.conninfo and f"dbname={database}" in options.conninfo
    assert "test-only_Pa55" not in options.shown


# -- every variable is one the platform reads ----------------------------------------------------


OTEL_SDK_VARIABLES = {"OTEL_EXPORTER_OTLP_ENDPOINT"}
"""Read by the OpenTelemetry SDK's OTLP exporter (NEXUS_OTEL_EXPORTER=otlp), not by Nexus's code."""


def test_every_variable_compose_gives_a_service_is_one_the_platform_reads() -> None:
    from nexus.runtime import DEFAULT_PORTS

    sources = "\n".join(
        path.read_text() for folder in ("libs", "services") for path in sorted((ROOT / folder).rglob("*.py"))
    )
    compose = _compose()
    names = set(compose["x-nexus"]["environment"])
    for service in compose["services"].values():
        if service.get("build"):
            names |= set(service["environment"])
    built = {f"NEXUS_{name.upper()}_URL" for name in DEFAULT_PORTS}  # service_urls builds these names
    unread = sorted(
        n
        for n in names
        if not re.search(rf"\b{n}\b", sources)
        and n not in built
        and not n.startswith("NEXUS_SERVICE_")
        and n not in OTEL_SDK_VARIABLES
    )
    assert not unread, f"set in docker-compose.yml but read nowhere in libs/ or services/: {unread}"


def _interpolated(value: str) -> str:
    """Compose's interpolation with nothing set: ``${X:-default}`` gives the default, and a
    required ``${X:?…}`` a test value (compose itself would refuse to start)."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "test-only", value)


def test_the_services_reach_each_other_by_their_compose_names() -> None:
    from nexus.services.kam.settings import load_settings as kam_settings
    from nexus.services.workflow.settings import load_settings as workflow_settings

    compose = _compose()

    def env_of(name: str) -> dict[str, str]:
        return {k: _interpolated(v) for k, v in compose["services"][name]["environment"].items()}

    expected = {name: f"http://{name}:{port}" for name, port in PORTS.items() if name != "relay"}
    workflow = workflow_settings(env_of("workflow"))
    # api_call steps call the platform services by their compose names, as platform services.
    assert {k: workflow.services[k] for k in expected} == expected
    assert set(expected) <= workflow.platform_services
    assert workflow.platform.event_log_url == MONGO_URL
    # KAM's console reaches them too, and the relay for its status page.
    assert kam_settings(env_of("kam")).services == {
        **expected,
        "core": expected["granulator"],
        "relay": f"http://relay:{PORTS['relay']}",
    }


def test_traces_go_through_the_collector_to_jaeger_which_grafana_reads() -> None:
    compose = _compose()
    env = compose["x-nexus"]["environment"]
    assert env["NEXUS_OTEL_EXPORTER"] == "otlp"
    collector = yaml.safe_load((ROOT / "deploy/otel/collector.yaml").read_text())
    # The services' endpoint is the collector's OTLP/HTTP receiver.
    port = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rsplit(":", 1)[1]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{port}"
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and set(pipeline["processors"]) <= set(collector["processors"])
    (exporter,) = pipeline["exporters"]
    assert collector["exporters"][exporter]["endpoint"].startswith("jaeger:")
    assert "jaeger" in compose["services"] and "otel-collector" in compose["services"]
    sources = {
        d["uid"]: d
        for path in (ROOT / "deploy/grafana/provisioning/datasources").glob("*.yaml")
        for d in yaml.safe_load(path.read_text())["datasources"]
    }
    assert sources["nexus-jaeger"]["url"] == "http://jaeger:16686"
    links = sources["nexus-prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert links == [{"name": "trace_id", "datasourceUid": "nexus-jaeger"}]
