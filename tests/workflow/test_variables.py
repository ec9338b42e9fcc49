"""Seed 004's fields taking effect: a workflow's ``variables`` (``$.variables.…``) and the queued
execution's ``retry_count``, ``max_retries`` and ``metadata``."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from nexus.obs import JsonFormatter
from nexus.services.workflow.definitions import parse_workflow
from nexus.services.workflow.driver import Driver
from nexus.services.workflow.errors import DefinitionError

VARIABLES_YAML = """
id: regional
variables:
  region: eu-west
  threshold: 10
  tags: [a, b]
steps:
  - id: call
    service: stub
    endpoint: /echo
    input_map:
      region: $.variables.region
      first_tag: $.variables.tags[0]
      tag: $.execution.metadata.tag
      name: $.input.name
  - id: only_big
    service: stub
    endpoint: /echo
    condition: $.input.size > $.variables.threshold
output:
  region: $.variables.region
  echoed: $.steps.call.output.echo
"""


def test_variables_are_parsed_and_undeclared_ones_refused() -> None:
    workflow = parse_workflow(VARIABLES_YAML)
    assert workflow.variables == {"region": "eu-west", "threshold": 10, "tags": ["a", "b"]}
    assert workflow.max_retries is None
    with pytest.raises(DefinitionError) as caught:
        parse_workflow(VARIABLES_YAML.replace("$.variables.region\n      first", "$.variables.regoin\n      first"))
    assert caught.value.problems == [
        (
            "$.steps[0].input_map.region",
            "JSONPath '$.variables.regoin' refers to undeclared variable 'regoin' (declared: region, tags, threshold)",
        )
    ]
    bad = {"id": "w", "variables": ["x"], "max_retries": -1, "steps": [{"id": "s", "service": "stub", "endpoint": "/"}]}
    with pytest.raises(DefinitionError) as caught:
        parse_workflow(bad)
    assert sorted(path for path, _ in caught.value.problems) == ["$.max_retries", "$.variables"]
    with pytest.raises(DefinitionError) as caught:
        parse_workflow({**bad, "variables": {"9lives": 1}, "max_retries": 3})
    assert [path for path, _ in caught.value.problems] == ["$.variables.9lives"]
    assert parse_workflow({**bad, "variables": {}, "max_retries": 3}).max_retries == 3


async def test_variables_and_metadata_are_read_by_mappings_conditions_and_output(workflow_service, stub) -> None:
    svc = await workflow_service()
    code, body = await svc.post("/workflows", data=VARIABLES_YAML)
    assert code == 201, body
    runs = {}
    for name, size in (("small", 3), ("big", 30)):
        code, accepted = await svc.post(
            "/executions",
            {"workflow_id": "regional", "input": {"name": name, "size": size}, "metadata": {"tag": f"t-{name}"}},
        )
        assert code == 202, accepted
        runs[name] = await svc.wait_final(accepted["id"])
    sent = [entry["body"] for entry in stub.log if entry["path"] == "/echo" and entry["body"]]
    assert {"region": "eu-west", "first_tag": "a", "tag": "t-small", "name": "small"} in sent
    assert {"region": "eu-west", "first_tag": "a", "tag": "t-big", "name": "big"} in sent
    # The condition compares the input with a variable: only the big one runs the second step.
    assert runs["small"].steps["only_big"].status == "skipped"
    assert runs["big"].steps["only_big"].status == "completed"
    assert runs["big"].output["region"] == "eu-west"
    assert runs["big"].output["echoed"]["tag"] == "t-big"


async def test_queued_execution_fields_are_shown_in_the_queue_and_the_execution(workflow_service, stub, until) -> None:
    svc = await workflow_service(NEXUS_WORKFLOW_CONCURRENCY="1")
    hold = {"id": "held", "max_retries": 4, "steps": [{"id": "hold", "service": "stub", "endpoint": "/hold"}]}
    assert (await svc.post("/workflows", hold))[0] == 201
    _, first = await svc.post("/executions", {"workflow_id": "held", "input": {}})
    await until(lambda: stub.requests[f"{first['id']}:hold"] == 1)
    # The second waits in the queue behind the first (one slot).
    code, waiting = await svc.post(
        "/executions",
        {"workflow_id": "held", "input": {}, "priority": 70, "max_retries": 2, "metadata": {"ticket": "T-1"}},
    )
    assert code == 202
    _, stats = await svc.get("/queue/stats")
    [queued] = stats["queued_executions"]
    assert queued["execution_id"] == waiting["id"] and queued["id"] == waiting["id"]
    assert (queued["status"], queued["priority"], queued["retry_count"], queued["max_retries"]) == ("QUEUED", 70, 0, 2)
    assert queued["metadata"] == {"ticket": "T-1"} and queued["queued_at"] and queued["updated_at"]
    # The running one took the workflow's max_retries; the fields are on the execution too.
    _, running = await svc.get(f"/executions/{first['id']}")
    assert (running["retry_count"], running["max_retries"], running["metadata"]) == (0, 4, None)
    _, shown = await svc.get(f"/executions/{waiting['id']}")
    assert (shown["max_retries"], shown["metadata"]) == (2, {"ticket": "T-1"})
    stub.release.set()
    assert (await svc.wait_final(waiting["id"])).status == "COMPLETED"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_retries", -1, "must be an integer from 0 to 1000"),
        ("max_retries", 1001, "must be an integer from 0 to 1000"),
        ("metadata", {"big": "x" * 20_000}, "at most 16384"),
    ],
)
async def test_bad_start_fields_are_refused_by_name(workflow_service, field: str, value: Any, message: str) -> None:
    svc = await workflow_service()
    await svc.post("/workflows", {"id": "w", "steps": [{"id": "s", "service": "stub", "endpoint": "/echo"}]})
    code, body = await svc.post("/executions", {"workflow_id": "w", "input": {}, field: value})
    assert code == 400
    assert body["problems"][0]["path"] == f"$.{field}" and message in body["problems"][0]["message"]
    # Metadata of the wrong type is refused by the body's schema.
    code, body = await svc.post("/executions", {"workflow_id": "w", "input": {}, "metadata": ["not", "an", "object"]})
    assert code == 400 and "metadata" in json.dumps(body)


async def test_max_retries_ends_an_execution_whose_driver_keeps_failing(
    workflow_service, stub, monkeypatch: pytest.MonkeyPatch, until
) -> None:
    svc = await workflow_service()
    # max_concurrent sends each start through the queue: the claim is stored before the driver acts.
    wf = {"id": "poison", "max_concurrent": 5, "steps": [{"id": "a", "service": "stub", "endpoint": "/echo"}]}
    assert (await svc.post("/workflows", wf))[0] == 201
    broken = 0

    async def perform(self: Driver, action: Any) -> None:
        nonlocal broken
        broken += 1
        raise RuntimeError("the driver cannot go on")

    monkeypatch.setattr(Driver, "perform", perform)
    # The driver's log lines carry the execution's correlation id (nexus.obs.correlation).
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter("tests"))
    engine_log = logging.getLogger("nexus.workflow.engine")
    engine_log.addHandler(handler)
    try:
        code, accepted = await svc.post(
            "/executions", {"workflow_id": "poison", "input": {}, "max_retries": 1, "correlation_id": "req-poison"}
        )
        assert code == 202
        final = await svc.wait_final(accepted["id"], timeout=20)
    finally:
        engine_log.removeHandler(handler)
    # The first dispatch and one retry, each failing; then it ends instead of a third.
    assert broken == 2
    assert final.status == "FAILED" and final.retry_count == 1 and final.claims == 2
    assert "dispatched 2 times" in final.error and "max_retries is 1" in final.error
    _, shown = await svc.get(f"/executions/{accepted['id']}")
    assert (shown["retry_count"], shown["max_retries"]) == (1, 1)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    failures = [r for r in records if "resumes on the next sweep" in r["message"]]
    assert len(failures) == 2 and {r.get("correlation_id") for r in failures} == {"req-poison"}
    # Every event of the execution carries the correlation id it was started with.
    _, history = await svc.get(f"/executions/{accepted['id']}/events")
    events = history["events"] if isinstance(history, dict) else history
    assert {e["correlationid"] for e in events} == {"req-poison"}


async def test_without_max_retries_a_failing_driver_is_retried_as_before(
    workflow_service, stub, monkeypatch: pytest.MonkeyPatch, until
) -> None:
    svc = await workflow_service()
    wf = {"id": "flaky_driver", "max_concurrent": 5, "steps": [{"id": "a", "service": "stub", "endpoint": "/echo"}]}
    assert (await svc.post("/workflows", wf))[0] == 201
    original = Driver.perform
    failures = 0

    async def perform(self: Driver, action: Any) -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RuntimeError("transient")
        await original(self, action)

    monkeypatch.setattr(Driver, "perform", perform)
    _, accepted = await svc.post("/executions", {"workflow_id": "flaky_driver", "input": {}})
    final = await svc.wait_final(accepted["id"], timeout=20)
    assert final.status == "COMPLETED" and final.retry_count == 2 and final.max_retries is None
