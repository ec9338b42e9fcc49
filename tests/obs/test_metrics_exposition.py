"""Metrics of a running platform: bounded series under 1,000 executions, exemplars that name traces.

``nexus up`` runs with tracing on (OTLP to a receiver the test starts). 1,000 executions run
through the HTTP API (one in ten fails on a 404 from the service its step calls), with requests
for unknown paths among them; every process's ``/metrics`` is scraped after the first 100 and
after all of them. No label value may be an id (the executions', the events', a path's), and
no process may gain more than a handful of series between the two scrapes: what grows with
the work done is the counters' values, not the number of series.

OpenMetrics: a scraper that asks for it (as Prometheus does) gets a valid OpenMetrics document
(parsed by prometheus-client's own parser) whose request-duration buckets carry exemplars with a
trace id the receiver was sent; one that does not gets the Prometheus text format.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import aiohttp
import pytest
from otlp_receiver import otlp_receiver
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from nexus.testing import RunningPlatform, running_platform

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.timeout(300)]

EXECUTIONS = 1000
WARM_UP = 100
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-|[0-9A-HJKMNP-TV-Z]{26}|[0-9a-f]{16,}", re.IGNORECASE)
"""A UUID, a ULID, or a long hex string (a trace or span id, a digest)."""

WORKFLOWS = [
    {
        "id": "counted",
        "name": "One call",
        "steps": [{"id": "list", "type": "api_call", "service": "studio", "endpoint": "/providers", "method": "GET"}],
    },
    {
        "id": "refused",
        "name": "One call that is refused",
        "steps": [
            {
                "id": "missing",
                "type": "api_call",
                "service": "studio",
                "endpoint": "/providers/no-such-provider",
                "method": "GET",
                "retry": {"max_attempts": 1},
            }
        ],
    },
]


async def _scrape(http: aiohttp.ClientSession, url: str, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with http.get(f"{url}/metrics", headers=headers) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


def _series(text: str) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Family name → the label sets of its samples (the Prometheus text format)."""
    found: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in parse_text(text):
        for sample in family.samples:
            found.setdefault(family.name, set()).add((("__name__", sample.name), *sorted(sample.labels.items())))
    return found


def _urls(up: RunningPlatform) -> dict[str, str]:
    urls = {name: up.url(name) for name in ("kam", "workflow", "granulator", "studio")}
    urls["relay"] = f"http://127.0.0.1:{up.ports['relay']}"
    return urls


async def _run_executions(http: aiohttp.ClientSession, up: RunningPlatform, start: int, stop: int) -> list[str]:
    """Start executions ``start`` to ``stop`` (every tenth refused), 20 at a time; their ids."""
    limit = asyncio.Semaphore(20)

    async def one(n: int) -> str:
        workflow = "refused" if n % 10 == 0 else "counted"
        async with limit, http.post(f"{up.workflow_url}/executions", json={"workflow_id": workflow}) as response:
            assert response.status == 202, await response.text()
            body = await response.json()
        # An unknown path beside each: its series must not be per path.
        async with limit, http.get(f"{up.workflow_url}/nothing-here/{uuid.uuid4()}") as response:
            assert response.status == 404
        return str(body["id"])

    return list(await asyncio.gather(*(one(n) for n in range(start, stop))))


async def _total(http: aiohttp.ClientSession, up: RunningPlatform, status: str) -> int:
    async with http.get(f"{up.workflow_url}/executions?limit=1&status={status}") as response:
        assert response.status == 200
        return int((await response.json())["total"])


async def _wait_finished(http: aiohttp.ClientSession, up: RunningPlatform, count: int) -> None:
    """Until ``count`` executions have ended (completed or failed)."""
    for _ in range(900):
        if await _total(http, up, "COMPLETED") + await _total(http, up, "FAILED") >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} executions ended\n{up.output_tail()}")


async def test_series_stay_bounded_and_latency_buckets_carry_exemplars(tmp_path: Path) -> None:
    async with otlp_receiver() as (receiver, endpoint):
        env = {
            "NEXUS_OTEL_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        async with running_platform(tmp_path / "nexus", env=env, ready_timeout=90) as up:
            key = await up.client_key("tests")
            urls = _urls(up)
            async with aiohttp.ClientSession(headers={"x-service-key": key}) as http:
                for workflow in WORKFLOWS:
                    async with http.post(f"{up.workflow_url}/workflows", json=workflow) as response:
                        assert response.status == 201, await response.text()
                for url in urls.values():
                    await _scrape(http, url)  # the /metrics route's own series exist from here on
                await _run_executions(http, up, 0, WARM_UP)
                await _wait_finished(http, up, WARM_UP)
                await asyncio.sleep(6)  # the relay's stream monitor (every 5 s) has seen every durable
                early = {name: _series((await _scrape(http, url))[1]) for name, url in urls.items()}
                await _run_executions(http, up, WARM_UP, EXECUTIONS)
                await _wait_finished(http, up, EXECUTIONS)
                late = {name: _series((await _scrape(http, url))[1]) for name, url in urls.items()}
                assert await _total(http, up, "FAILED") == EXECUTIONS // 10
                assert await _total(http, up, "COMPLETED") == EXECUTIONS - EXECUTIONS // 10

                # The exposition formats, as a scraper negotiates them.
                content_type, plain = await _scrape(http, up.workflow_url)
                assert content_type.startswith("text/plain; version=0.0.4"), content_type
                assert " # {" not in plain  # the text format has no exemplars
                content_type, openmetrics = await _scrape(http, up.workflow_url, OPENMETRICS)
                assert content_type.startswith("application/openmetrics-text; version=1.0.0"), content_type
                families = {family.name: family for family in parse_openmetrics(openmetrics)}
            await asyncio.sleep(0.5)

    # No label value is an id, and no process gains series as executions pile up.
    for name, families_late in late.items():
        total_early = sum(len(s) for s in early[name].values())
        total_late = sum(len(s) for s in families_late.values())
        print(f"{name}: {total_early} series after {WARM_UP} executions, {total_late} after {EXECUTIONS}")
        grown = {
            family: sorted(label_sets - early[name].get(family, set()))[:5]
            for family, label_sets in families_late.items()
            if label_sets - early[name].get(family, set())
        }
        assert total_late <= total_early + 10, (name, total_early, total_late, grown)
        for family, label_sets in families_late.items():
            assert len(label_sets) <= 400, (name, family, len(label_sets))
            for labels in label_sets:
                for label, value in labels[1:]:
                    assert not _ID.search(value), f"{name}: {family} has label {label}={value!r}"

    # The request-duration buckets of the workflow service point at exported traces.
    exported = {span.trace_id for span in receiver.spans}
    exemplars = [
        sample.exemplar
        for sample in families["nexus_http_request_duration_seconds"].samples
        if sample.name.endswith("_bucket") and sample.exemplar is not None
    ]
    assert exemplars, "no request-duration bucket carries an exemplar"
    for exemplar in exemplars:
        trace_id = exemplar.labels["trace_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert {e.labels["trace_id"] for e in exemplars} & exported
    steps = [
        sample.exemplar
        for sample in families["nexus_workflow_step_duration_seconds"].samples
        if sample.exemplar is not None
    ]
    assert steps and all(e.labels["trace_id"] in exported for e in steps)
