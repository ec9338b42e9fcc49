"""``nexus workflow register|run|status`` and ``nexus bench`` against a real workflow service."""

from __future__ import annotations

import json
import re

import pytest

from nexus.cli.commands import bench

SCHEMA = """
id: greeting_input_v1
type: input
definition:
  type: object
  required: [name]
  properties:
    name: {type: string, minLength: 1}
    fail: {type: boolean}
"""
WORKFLOW = """
id: greet
input_schema_id: greeting_input_v1
steps:
  - id: hello
    service: echo
    endpoint: /echo
    input_map:
      greeting: "Hello {$.input.name}"
      fail: $.input.fail
    retry: {max_attempts: 1}
output:
  message: $.steps.hello.output.echo.greeting
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    (tmp_path / "workflow.yaml").write_text(WORKFLOW)
    (tmp_path / "input.json").write_text(json.dumps({"name": "Ada"}))
    (tmp_path / "other.yaml").write_text("id: x\nname: neither\n")
    return tmp_path


async def test_register_run_wait_and_status(workflow_app, nexus, files):
    env = {"NEXUS_WORKFLOW_URL": workflow_app.url, "NEXUS_SERVICE_KEY": workflow_app.key}
    result = await nexus("workflow", "register", str(files / "schema.yaml"), env=env)
    assert (result.code, result.out.strip()) == (0, "registered schema greeting_input_v1, version 1"), result.err
    result = await nexus("workflow", "register", str(files / "workflow.yaml"), env=env)
    assert (result.code, result.out.strip()) == (0, "registered workflow greet, version 1"), result.err
    result = await nexus("workflow", "register", str(files / "workflow.yaml"), env=env)
    assert result.out.strip() == "registered workflow greet, version 2"

    # Without --wait: the execution id only.
    result = await nexus("workflow", "run", "greet", "--input", '{"name": "Bo"}', "--priority", "90", env=env)
    assert result.code == 0, result.err
    execution_id = result.out.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", execution_id)
    # With --wait: the id, every transition, then the final state and the output.
    result = await nexus("workflow", "run", "greet", "--input", f"@{files / 'input.json'}", "--wait", env=env)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    waited_id = lines[0]
    assert re.fullmatch(r"[0-9a-f-]{36}", waited_id) and waited_id != execution_id
    # Every transition of the history, in order, each once.
    transitions = [line.split()[1] for line in lines if re.match(r"  \d\d:\d\d:\d\d\.\d{3}  ", line)]
    assert transitions == [
        "execution.queued",
        "execution.claimed",
        "step.started",
        "step.completed",
        "execution.completed",
    ]
    assert any(re.search(r"step\.started +hello \(attempt 1\)$", line) for line in lines)
    assert any(re.search(r"step\.completed +hello in \d+ ms$", line) for line in lines)
    assert f"execution {waited_id}" in lines and "  status     COMPLETED" in lines
    assert '"message": "Hello Ada"' in result.out

    result = await nexus("workflow", "status", waited_id, env=env)
    assert result.code == 0 and "  status     COMPLETED" in result.out and "  - hello: completed" in result.out
    result = await nexus("workflow", "status", "--json", execution_id, env=env)
    body = json.loads(result.out)
    assert body["id"] == execution_id and body["priority"] == 90 and body["workflow_version"] == 2


async def test_failures_are_reported_clearly(workflow_app, nexus, files):
    env = {"NEXUS_WORKFLOW_URL": workflow_app.url, "NEXUS_SERVICE_KEY": workflow_app.key}
    await nexus("workflow", "register", str(files / "schema.yaml"), env=env)
    await nexus("workflow", "register", str(files / "workflow.yaml"), env=env)
    # A failed execution: exit 1, the state says why.
    result = await nexus("workflow", "run", "greet", "--input", '{"name": "Cy", "fail": true}', "--wait", env=env)
    assert result.code == 1 and "  status     FAILED" in result.out and "422" in result.out
    assert re.search(r"step\.failed +hello: service 'echo': POST \S+/echo answered 422", result.out)
    # Input the schema refuses: every field at fault, by path.
    result = await nexus("workflow", "run", "greet", "--input", '{"name": ""}', env=env)
    assert result.code == 1 and "400" in result.err and "$.input.name" in result.err
    result = await nexus("workflow", "run", "greet", "--input", "{oops", env=env)
    assert result.code == 2 and "--input is not valid JSON" in result.err
    result = await nexus("workflow", "run", "greet", "--priority", "101", env=env)
    assert result.code == 2 and "--priority 101" in result.err
    result = await nexus("workflow", "status", "no-such-execution", env=env)
    assert result.code == 1 and "404" in result.err
    result = await nexus("workflow", "register", str(files / "other.yaml"), env=env)
    assert result.code == 2 and "neither a workflow" in result.err
    result = await nexus("workflow", "register", str(files / "missing.yaml"), env=env)
    assert result.code == 2 and "cannot read" in result.err
    # No key, a wrong key, no service.
    result = await nexus("workflow", "status", "x", env={"NEXUS_WORKFLOW_URL": workflow_app.url})
    assert result.code == 2 and "NEXUS_SERVICE_KEY is not set" in result.err
    bad = {"NEXUS_WORKFLOW_URL": workflow_app.url, "NEXUS_SERVICE_KEY": "nxk_0000000000000000.wrong"}
    result = await nexus("workflow", "status", "x", env=bad)
    assert result.code == 4 and "401" in result.err and "NEXUS_SERVICE_KEY" in result.err
    port = workflow_app.url.rsplit(":", 1)[1]
    await workflow_app.service.stop()
    result = await nexus("workflow", "status", "x", env={"NEXUS_WORKFLOW_PORT": port, "NEXUS_SERVICE_KEY": "k"})
    assert result.code == 3 and f"cannot reach the workflow service at http://127.0.0.1:{port}" in result.err


async def test_bench_delegates_to_the_bench_package(nexus, monkeypatch):
    assert bench.find_bench() is not None
    result = await nexus("bench", "--help")
    assert result.code == 0
    monkeypatch.setattr(bench, "find_bench", lambda: None)
    result = await nexus("bench", "--quick", "proof")
    assert result.code == 2 and "not available" in result.err and "checkout of the repository" in result.err
