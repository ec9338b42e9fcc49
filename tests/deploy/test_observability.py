"""What an operator looks at: the Grafana dashboards and the Prometheus alert rules in deploy/.

Checked by Prometheus's own tool (``promtool check rules``, ``promtool check config``, ``promtool
test rules``) and against a running platform: every metric name a dashboard panel, an alert rule
or a rule's unit test names is one that ``nexus up``'s processes export on ``/metrics``; then
Debian's Prometheus server scrapes those processes with the rules loaded, answers every panel's
query without error (the key panels with data), and raises no alert on the healthy platform.

How metric names are found in PromQL: ``metric_names`` is a small tokenizer. It drops string
literals (label values such as ``"5.."`` are not names), the insides of label matchers ``{…}``
and of range or subquery brackets ``[…]``, the label lists of ``by``/``without``/``on``/
``ignoring``/``group_left``/``group_right``, and Grafana's variables (``$service``,
``$__rate_interval``); what is left that looks like an identifier and is not a function call
(followed by ``(``), a keyword or a number is a metric name. ``test_the_tokenizer`` pins it on
the awkward cases. That the expressions are valid PromQL at all is promtool's word: every
dashboard expression is also checked as a recording rule by ``promtool check rules``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "nexus.rules.yml"
RULE_TESTS = PROMETHEUS / "rules" / "nexus.rules.test.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "nexus-prometheus"

PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every target (not exported by Nexus)."""

# -- PromQL: the metric names an expression names ------------------------------------------------

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) names."""
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_the_tokenizer() -> None:
    assert metric_names('sum by (service, route) (rate(nexus_http_requests_total{status=~"5.."}[5m]))') == {
        "nexus_http_requests_total"
    }
    # Label values, matchers, Grafana variables and durations are not names; functions are not.
    assert metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{route="/x/{id}", service=~"$service"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("a / on(instance) group_left(version) b > bool 1e3 and c offset 5m") == {"a", "b", "c"}
    assert metric_names("(sum(rate(x_total[5m])) or on() vector(0)) == 0 unless absent(y)") == {"x_total", "y"}
    assert metric_names("max(delta(s{stream='NEXUS_DLQ'}[10m:1m])) > 0") == {"s"}
    assert metric_names("label_values(nexus_http_requests_total, service)") == {"nexus_http_requests_total", "service"}
    assert metric_names("nexus_kam_costs_total * -Inf + NaN") == {"nexus_kam_costs_total"}


def _template_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    return str(query.get("query", "")) if isinstance(query, dict) else str(query or "")


def dashboard_expressions() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every query of every dashboard."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                yield path.name, panel["title"], target["expr"]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_metric_names() -> dict[str, set[str]]:
    """Metric name → where it is used, over every panel and template variable of every dashboard."""
    used: dict[str, set[str]] = {}
    for name, title, expr in dashboard_expressions():
        for metric in metric_names(expr):
            used.setdefault(metric, set()).add(f"{name}: {title}")
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            query = _template_query(variable)
            match = re.fullmatch(r"\s*label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)\s*", query)
            assert match, f"{path.name}: variable {variable['name']} queries {query!r} (label_values(metric, label))"
            for metric in metric_names(match.group(1)):
                used.setdefault(metric, set()).add(f"{path.name}: variable {variable['name']}")
    return used


def rule_metric_names() -> dict[str, set[str]]:
    """Metric name → the alerts and rule unit tests that use it."""
    used: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for metric in metric_names(rule["expr"]):
                used.setdefault(metric, set()).add(f"alert {rule['alert']}")
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in case["input_series"]:
            used.setdefault(series["series"].split("{", 1)[0], set()).add(f"rule test {case['name']!r}")
    return used


# -- the alert rules, by promtool ----------------------------------------------------------------


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules_and_the_configuration(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", str(RULES), cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    # The configuration names the rules file (and promtool checks it again through it).
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/nexus.rules.yml"]
    result = _promtool(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


ALERTS = yaml.safe_load(RULES.read_text())["groups"]
ALERT_NAMES = [rule["alert"] for group in ALERTS for rule in group["rules"]]


def test_the_rules_cover_what_the_issue_asks_and_each_is_complete() -> None:
    rules = {rule["alert"]: rule for group in ALERTS for rule in group["rules"]}
    # Relay lag, consumer lag, DLQ growth, a service down, error ratio, executions stuck.
    assert {
        "NexusRelayLagging",
        "NexusConsumerLagging",
        "NexusDeadLettersGrowing",
        "NexusServiceDown",
        "NexusHighErrorRatio",
        "NexusExecutionsStuck",
    } <= set(rules)
    for name, rule in rules.items():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name} has no `for:`"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert all(text.strip() for text in rule["annotations"].values()), name


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(ALERT_NAMES) <= firing, f"never seen firing: {set(ALERT_NAMES) - firing}"
    assert set(ALERT_NAMES) <= quiet, f"never seen quiet: {set(ALERT_NAMES) - quiet}"


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_the_unit_tests_fail_when_an_alert_cannot_fire(promtool: str, tmp_path: Path, alert: str) -> None:
    # The same rules with this alert's expression replaced by one that never returns anything:
    # the unit tests must notice (they are not vacuous).
    groups = yaml.safe_load(RULES.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(1) < 0"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(groups, sort_keys=False))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = _promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, f"no rule test notices that {alert} can no longer fire"
    assert f"alertname: {alert}," in result.stdout + result.stderr


# -- the dashboards ------------------------------------------------------------------------------


def test_the_provisioning_points_grafana_at_the_dashboards_and_at_prometheus() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "nexus.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # The path Grafana reads is where docker-compose.yml mounts deploy/grafana/dashboards.
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# What each dashboard must show (issue: "What an operator looks at"), as the series it reads.
REQUIRED = {
    "nexus-overview.json": {
        "nexus_events_appended_total",
        "nexus_relay_published_total",
        "nexus_consumer_processed_total",
        "nexus_relay_lag_events",
        "nexus_stream_consumer_pending_messages",
        "nexus_stream_messages",
    },
    "nexus-workflows.json": {
        "nexus_workflow_executions_ended_total",
        "nexus_workflow_executions",
        "nexus_workflow_step_duration_seconds_bucket",
        "nexus_workflow_queue_depth",
        "nexus_workflow_step_retries_total",
    },
    "nexus-http.json": {"nexus_http_requests_total", "nexus_http_request_duration_seconds_bucket"},
    "nexus-granulator.json": {
        "nexus_granulator_process_duration_seconds_count",
        "nexus_granulator_validation_accuracy_percent_bucket",
    },
    "nexus-kam.json": {"nexus_kam_requests", "nexus_kam_costs_total"},
}


def test_every_dashboard_is_valid_json_with_well_formed_panels() -> None:
    assert {path.name for path in DASHBOARDS} == set(REQUIRED)
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids and len(dashboard["uid"]) <= 40, path.name
        uids.add(dashboard["uid"])
        assert dashboard["title"].startswith("Nexus") and dashboard["schemaVersion"] >= 36
        used: set[str] = set()
        ids = set()
        titles = [panel["title"] for panel in _panels(dashboard["panels"]) if panel["type"] != "row"]
        assert len(titles) == len(set(titles)), f"{path.name}: two panels with one title"
        for panel in _panels(dashboard["panels"]):
            assert panel["id"] not in ids, f"{path.name}: panel id {panel['id']} twice"
            ids.add(panel["id"])
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']}"
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel["description"], f"{path.name}: a panel without title or description"
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
            refs = [target["refId"] for target in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID and target["expr"].strip(), panel["title"]
                used |= metric_names(target["expr"])
        assert REQUIRED[path.name] <= used, f"{path.name} lacks {REQUIRED[path.name] - used}"


_GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$service": ".*",
}


def test_every_dashboard_expression_is_promql_that_promtool_accepts(promtool: str, tmp_path: Path) -> None:
    # Each expression, with Grafana's variables given values, becomes a recording rule: promtool's
    # parser checks its syntax (and its functions' argument types).
    rules = []
    for number, (name, title, expr) in enumerate(dashboard_expressions()):
        for variable, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{name}: {title}: an unknown Grafana variable in {expr!r}"
        rules.append({"record": f"nexus_dashboard:expression_{number}", "expr": expr})
    (tmp_path / "dashboards.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _promtool(promtool, "check", "rules", "dashboards.rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# -- against a running platform ------------------------------------------------------------------


def exported_names(text: str) -> set[str]:
    """Every series name a ``/metrics`` page exports, declared families included.

    A labelled family with no sample yet (no request on that route so far) is declared by its
    ``# TYPE`` line; its series names follow from the type: a counter ``name_total`` (and
    ``name_created``), a histogram ``name_bucket``, ``name_sum``, ``name_count``, a gauge ``name``.
    """
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "unknown": ("",),
    }
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in suffixes[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


def test_exported_names_count_declared_families_with_their_series() -> None:
    page = "\n".join(
        [
            "# HELP a_total A counter with no child yet.",
            "# TYPE a_total counter",
            "# HELP h_seconds A histogram with no child yet.",
            "# TYPE h_seconds histogram",
            "# HELP g A gauge.",
            "# TYPE g gauge",
            'g{stream="x"} 1.0',
            "",
        ]
    )
    assert exported_names(page) == {
        "a_total",
        "a_created",
        "h_seconds_bucket",
        "h_seconds_sum",
        "h_seconds_count",
        "h_seconds_created",
        "g",
    }
    assert sampled_names(page) == {"g"}


def sampled_names(text: str) -> set[str]:
    """The series names that have at least one sample."""
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


async def _traffic(up: Any) -> None:
    """A little of everything: a workflow run to its end, a KAM login, a granulation, a blob."""
    from e2e_platform import SCHEMA, WORKFLOW

    key = await up.client_key()
    await up.register(key, ("/schemas", SCHEMA), ("/workflows", WORKFLOW))
    headers = {"x-service-key": key}
    async with aiohttp.ClientSession(headers=headers) as http:
        body = {"workflow_id": "anomaly_job", "input": {"title": "Quake", "confidence": 0.9, "region": "tohoku"}}
        async with http.post(up.workflow_url + "/executions", json=body) as response:
            assert response.status == 202, await response.text()
            execution = (await response.json())["id"]
        for _ in range(150):
            async with http.get(f"{up.workflow_url}/executions/{execution}") as response:
                if (await response.json())["status"] == "COMPLETED":
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"execution {execution} did not complete")
        async with http.get(up.workflow_url + "/executions/nope") as response:
            assert response.status == 404
        async with http.post(
            up.kam_url + "/v1/login", json={"user": "admin", "password": up.admin_password}
        ) as response:
            assert response.status == 200, await response.text()
        granulator = f"http://127.0.0.1:{up.ports['granulator']}"
        handshake = {
            "stage": "content_granulation",
            "execution_id": "exec_metrics",
            "input": {"topic": "Tea", "structure_type": "research_report"},
            "requirements": {"memory_mb": 128, "timeout_ms": 60000},
        }
        async with http.post(granulator + "/api/handshake", json=handshake) as response:
            assert response.status == 200, await response.text()
        studio = f"http://127.0.0.1:{up.ports['studio']}"
        async with http.post(studio + "/blobs", json={"content": {"a": 1}, "content_type": "application/json"}) as r:
            assert r.status == 201, await r.text()


# Panels that must show data on a platform that ran a workflow (others may rightly be empty:
# no 5xx, nothing queued, no retry, no cost: the traffic runs no KAM request).
MUST_SHOW = {
    ("nexus-overview.json", "Replicas up"),
    ("nexus-overview.json", "Dead letters waiting (NEXUS_DLQ)"),
    ("nexus-overview.json", "Events appended, relayed and consumed per second"),
    ("nexus-overview.json", "Consumer lag per durable"),
    ("nexus-overview.json", "DLQ size"),
    ("nexus-overview.json", "Stream sizes"),
    ("nexus-overview.json", "Relay lease and health"),
    ("nexus-workflows.json", "Executions by status"),
    ("nexus-workflows.json", "Executions ended by outcome"),
    ("nexus-workflows.json", "Oldest queued execution"),
    ("nexus-workflows.json", "Step latency p95 by service"),
    ("nexus-workflows.json", "Step attempts by service and outcome"),
    ("nexus-http.json", "Requests per second by route"),
    ("nexus-http.json", "Latency p95 by route"),
    ("nexus-http.json", "Client errors (4xx) by route"),
    ("nexus-granulator.json", "Handshakes by outcome"),
    ("nexus-granulator.json", "Jobs in progress and capacity"),
    ("nexus-kam.json", "Requests by state"),
    ("nexus-kam.json", "KAM requests per second by route"),
}


async def _prometheus_answers_every_panel_and_raises_no_alert(
    binary: str, urls: dict[str, str], tmp_path: Path
) -> None:
    """Run Debian's Prometheus on a free loopback port against the platform's processes.

    The scrape configuration is deploy/prometheus/prometheus.yml's with static targets in place
    of DNS discovery (the same job names and ``service`` labels) and a 1 s interval; the rules are
    deploy/'s. Every dashboard query must evaluate without error (promtool only parses: a query can
    still fail when evaluated, on duplicate series or a many-to-many match), those of ``MUST_SHOW``
    must return series, and on this healthy platform no alert may be firing or even pending. The
    server is killed (by its process id) before the function returns, failed or not.
    """
    from processes import free_port

    jobs: dict[str, list[dict[str, Any]]] = {"nexus": [], "nexus-relay": []}
    for name, url in urls.items():
        target = {"targets": [url.removeprefix("http://")], "labels": {"service": name}}
        jobs["nexus-relay" if name == "relay" else "nexus"].append(target)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": job, "static_configs": targets} for job, targets in jobs.items()],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "prometheus.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=output,
            stderr=output,
        )
    try:
        async with aiohttp.ClientSession() as http:

            async def query(expr: str) -> dict[str, Any]:
                async with http.get(base + "/api/v1/query", params={"query": expr}) as response:
                    return dict(await response.json())

            async def until(what: str, predicate: Any) -> None:
                for _ in range(150):
                    try:
                        if await predicate():
                            return
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.2)
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"Prometheus: {what} did not happen within 30 s; its log ends:\n{tail}")

            async def every_target_up() -> bool:
                result = (await query('up{job=~"nexus|nexus-relay"} == 1'))["data"]["result"]
                return {r["metric"]["service"] for r in result} == set(urls)

            await until("every process scraped", every_target_up)
            # A few more scrapes, so that rate() has samples to work on and the rules ran.
            await asyncio.sleep(4)
            failures = []
            for name, title, expr in dashboard_expressions():
                for variable, value in _GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                answer = await query(expr)
                if answer["status"] != "success":
                    failures.append(f"{name}: {title}: {expr}: {answer.get('error')}")
                elif (name, title) in MUST_SHOW and not answer["data"]["result"]:
                    failures.append(f"{name}: {title}: {expr}: no series")
            assert not failures, "\n".join(failures)
            async with http.get(base + "/api/v1/rules") as response:
                groups = (await response.json())["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert {rule["name"] for rule in rules} == set(ALERT_NAMES)
            for rule in rules:
                assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
                # Seconds-old Prometheus: a rate over a counter with one sample can hold a rule
                # pending for a moment (each alert waits minutes with `for:`); none may fire.
                assert rule["state"] != "firing", f"{rule['name']} is firing on a healthy platform"
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        assert response.status == 200, f"{url}/metrics answered {response.status}"
        return await response.text()


@pytest.mark.nats
@pytest.mark.slow
async def test_a_running_platform_exports_every_series_named_and_prometheus_answers_every_panel(
    tmp_path: Path, prometheus_server: str
) -> None:
    from platform_process import running_platform

    async with running_platform(tmp_path) as up:
        try:
            await _traffic(up)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{''.join(up.output[-60:])}") from None
        # Every process `nexus up` lists with a URL (the four services and the relay process).
        urls = dict(re.findall(r"^  (\w+)\s+(http://\S+)$", "".join(up.output), re.MULTILINE))
        urls.pop("console", None)  # KAM's page, not another process to scrape
        assert set(urls) == {"kam", "workflow", "granulator", "studio", "relay"}, "".join(up.output)
        exported: set[str] = set()
        sampled: set[str] = set()
        # The relay process reads JetStream every few seconds: wait until it has (and the
        # workflow step's metrics are there), then scrape every process.
        for _ in range(100):
            pages = {name: await _scrape(url) for name, url in urls.items()}
            sampled = set().union(*(sampled_names(page) for page in pages.values()))
            if {"nexus_stream_consumer_pending_messages", "nexus_workflow_executions_ended_total"} <= sampled:
                break
            await asyncio.sleep(0.2)
        for page in pages.values():
            exported |= exported_names(page)
        # Prometheus itself scrapes the platform, evaluates the rules and answers every panel.
        await _prometheus_answers_every_panel_and_raises_no_alert(prometheus_server, urls, tmp_path)

    used = dashboard_metric_names()
    for metric, places in rule_metric_names().items():
        used.setdefault(metric, set()).update(places)
    missing = {metric: sorted(places) for metric, places in used.items() if metric not in exported | PROMETHEUS_OWN}
    assert not missing, f"series no process exports: {json.dumps(missing, indent=2)}"
    # The traffic reached the series the dashboards are about (not only their declarations).
    assert {
        "nexus_http_requests_total",
        "nexus_http_request_duration_seconds_bucket",
        "nexus_events_appended_total",
        "nexus_relay_published_total",
        "nexus_relay_lag_events",
        "nexus_consumer_processed_total",
        "nexus_stream_messages",
        "nexus_stream_consumer_pending_messages",
        "nexus_workflow_executions",
        "nexus_workflow_executions_ended_total",
        "nexus_workflow_step_duration_seconds_bucket",
        "nexus_workflow_queue_oldest_age_seconds",
        "nexus_granulator_handshakes_total",
        "nexus_kam_requests",
    } <= sampled, sorted(sampled)
