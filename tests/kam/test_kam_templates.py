"""KAM's templates: bundled ones registered once, admins register more, and each bundled one runs.

The platform runs in-process on one memory log, bus and Raw: the granulator, the workflow service
(which registers its bundled workflows, KAM's ``kam-*`` among them) and KAM.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from inprocess import SharedBus, SharedLog, build

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.kam.context import CLIENT_SCOPES
from nexus.services.kam.state import TEMPLATES_STREAM
from nexus.services.kam.templates import (
    BUNDLED_TEMPLATES,
    apply_parameters,
    read_directory,
    register_bundled,
)
from nexus.services.workflow.context import CTX_KEY
from nexus.services.workflow.definitions import parse_schema, parse_workflow
from nexus.services.workflow.settings import BUNDLED_DIR

BUNDLED_NAMES = ["quick_brief", "article_draft", "course_outline_builder", "comprehensive_report_pipeline"]

NEW_TEMPLATE = """
id: 7
name: tea_tasting_notes
tier: basic
description: Tasting notes for a tea
category: writing
keywords: [tea, tasting]
workflow_id: kam_quick_brief
stages: [brief]
parameters:
  type: object
  additionalProperties: false
  properties:
    tone: {type: string, default: friendly}
    max_tokens: {type: integer, default: 300}
cost: {per_run: 0.02, per_1k_tokens: 0.001, per_stage: 0.0, currency: EUR, estimated_tokens: 400}
deliverable: {type: text}
resources: {max_workers: 1, timeout_ms: 30000}
"""


@dataclass
class Platform:
    """KAM, the workflow service and the granulator on one log, and API keys for callers."""

    log: MemoryEventLog
    bus: MemoryBus
    kam: Service
    workflow: Service
    keys: dict[str, str]
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, who: str, body: Any = None, *, data: str | None = None
    ) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.kam.port}{path}"
        sent = json.dumps(body) if data is None and body is not None else data
        async with self.http.request(method, url, data=sent, headers={"X-API-Key": self.keys[who]}) as r:
            return r.status, await r.json()

    async def run(self, workflow_id: str, execution_input: dict[str, Any]) -> Any:
        """Start ``workflow_id`` as client alpha and wait for its end."""
        url = f"http://127.0.0.1:{self.workflow.port}/executions"
        body = {"workflow_id": workflow_id, "input": execution_input}
        async with self.http.post(url, json=body, headers={"X-API-Key": self.keys["alpha"]}) as r:
            started = await r.json()
            assert r.status == 202, started
        async with asyncio.timeout(30):
            async for state in self.workflow.app[CTX_KEY].engine.watch(started["id"]):
                if state.final:
                    return state
        return None


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    log, bus, raw = SharedLog(), SharedBus(), MemoryRaw()
    await bus.ensure_streams()
    granulator = await build("granulator", tmp_path, log=log, bus=bus, raw=raw)
    await granulator.start()
    workflow = await build("workflow", tmp_path, log=log, bus=bus, raw=raw, NEXUS_GRANULATOR_PORT=str(granulator.port))
    await workflow.start()
    kam = await build("kam", tmp_path, log=log, bus=bus, raw=raw)
    await kam.start()
    keys = {
        "admin": (await issue_key(log, "client", "ops", scopes=("admin",))).secret,
        "alpha": (await issue_key(log, "client", "alpha", scopes=CLIENT_SCOPES)).secret,
        "alpha_requests": (await issue_key(log, "client", "alpha", scopes=("requests:read",))).secret,
    }
    async with aiohttp.ClientSession() as http:
        yield Platform(log, bus, kam, workflow, keys, http)
    await kam.stop()
    await workflow.stop()
    await granulator.stop()


def execute_body(template: dict[str, Any], parameters: dict[str, Any], request: dict[str, str]) -> dict[str, Any]:
    """The body KAM starts a template's workflow with (seed 002, phase 4), the contract of its input schema."""
    return {
        "template": {"id": template["id"], "name": template["name"], "stages": template["stages"]},
        "context": {
            "client_id": "alpha",
            "request_id": "req_0123456789abcdef01234567",
            "parameters": apply_parameters(template["parameters"], parameters),
            "request": request,
        },
        "resources": template["resources"],
    }


def test_each_bundled_template_names_a_bundled_workflow_whose_steps_are_its_stages() -> None:
    workflows = {
        (w := parse_workflow(p.read_bytes())).id: w for p in sorted((BUNDLED_DIR / "workflows").glob("kam-*.yaml"))
    }
    schemas = {(s := parse_schema(p.read_bytes())).id: s for p in sorted((BUNDLED_DIR / "schemas").glob("kam-*.yaml"))}
    templates = read_directory(BUNDLED_TEMPLATES)
    assert sorted(t["name"] for t in templates) == sorted(BUNDLED_NAMES)
    assert len({t["id"] for t in templates}) == len(templates)
    for template in templates:
        workflow = workflows[template["workflow_id"]]
        assert template["stages"] == [step.id for step in workflow.steps], template["name"]
        # The defaults alone make an input the workflow's schema accepts.
        body = execute_body(template, {}, {"title": "Tea", "description": "", "urgency": "low", "category": "x"})
        schemas[workflow.input_schema_id].validator.validate(body)
    # The seed's template and its parameters.
    [seed] = [t for t in templates if t["id"] == 5]
    assert seed["name"] == "comprehensive_report_pipeline" and seed["tier"] == "premium"
    assert apply_parameters(seed["parameters"], {"depth": "detailed", "sources": 10})["validate"] is True
    # A parameter the workflow needs but the template's schema lets through unset would fail it.
    with pytest.raises(jsonschema.ValidationError):
        bad = execute_body(seed, {}, {"title": "Tea"})
        del bad["context"]["parameters"]["depth"]
        schemas["kam_comprehensive_report_input_v1"].validator.validate(bad)


async def test_bundled_templates_are_listed_and_registered_once(platform: Platform, tmp_path: Path) -> None:
    status, body = await platform.call("GET", "/api/templates", "alpha")
    assert status == 200, body
    assert [t["name"] for t in body["templates"]] == BUNDLED_NAMES  # by id
    seed = body["templates"][-1]
    assert seed["id"] == 5 and seed["estimated_cost"] == pytest.approx(0.5 + 5 * 0.05 + 15 * 0.002)
    status, body = await platform.call("GET", "/api/kam/templates?tier=premium", "alpha")
    assert [t["name"] for t in body["templates"]] == ["comprehensive_report_pipeline"]
    status, body = await platform.call("GET", "/api/templates?tier=gold", "alpha")
    assert status == 400 and "tier" in body["message"]
    for key in ("5", "comprehensive_report_pipeline"):
        status, body = await platform.call("GET", f"/api/templates/{key}", "alpha")
        assert status == 200 and body["workflow_id"] == "kam_comprehensive_report"
    status, body = await platform.call("GET", "/api/templates/99", "alpha")
    assert status == 404
    status, body = await platform.call("GET", "/api/templates", "alpha_requests")
    assert status == 403  # the key lacks templates:read
    # A restart registers nothing again; a changed file registers that template only.
    events = await platform.log.read_stream(TEMPLATES_STREAM)
    assert len(events) == 4 and all(e.data["registered_by"].startswith("bundled:") for e in events)
    restarted = await build("kam", tmp_path / "again", log=platform.log, bus=platform.bus)
    await restarted.start()
    await restarted.stop()
    assert len(await platform.log.read_stream(TEMPLATES_STREAM)) == 4
    changed = tmp_path / "bundled"
    shutil.copytree(BUNDLED_TEMPLATES, changed)
    text = (changed / "quick_brief.yaml").read_text().replace("per_run: 0.05", "per_run: 0.06")
    (changed / "quick_brief.yaml").write_text(text)
    assert await register_bundled(platform.log, changed) == ["quick_brief"]
    assert await register_bundled(platform.log, changed) == []
    assert len(await platform.log.read_stream(TEMPLATES_STREAM)) == 5
    # A bundled template whose name another template already has is skipped, not forced in.
    clash = tmp_path / "clash"
    clash.mkdir()
    renumbered = text.replace("\nid: 1\n", "\nid: 9\n")
    assert renumbered != text
    (clash / "brief.yaml").write_text(renumbered)
    assert await register_bundled(platform.log, clash) == []
    assert len(await platform.log.read_stream(TEMPLATES_STREAM)) == 5


async def test_an_admin_registers_a_template_as_yaml_or_json(platform: Platform) -> None:
    status, body = await platform.call("POST", "/api/templates", "admin", data=NEW_TEMPLATE)
    assert status == 201, body
    assert body["name"] == "tea_tasting_notes" and body["title"] == "tea_tasting_notes"
    assert body["estimated_cost"] == pytest.approx(0.02 + 0.4 * 0.001)
    status, body = await platform.call("GET", "/api/templates/tea_tasting_notes", "alpha")
    assert status == 200 and body["cost"]["currency"] == "EUR"
    # The same document again records nothing; a changed one (as JSON) replaces it.
    await platform.call("POST", "/api/templates", "admin", data=NEW_TEMPLATE)
    assert len(await platform.log.read_stream(TEMPLATES_STREAM)) == 5
    status, body = await platform.call("GET", "/api/templates/7", "alpha")
    # The API's view (with estimated_cost) is not a document: sent back as it is, it is refused.
    status, refused = await platform.call("POST", "/api/templates", "admin", {**body, "description": "Notes"})
    assert status == 400 and "estimated_cost" in refused["message"]
    document = {k: v for k, v in body.items() if k != "estimated_cost"}
    status, body = await platform.call("POST", "/api/templates", "admin", {**document, "description": "Notes on a tea"})
    assert status == 200 and body["description"] == "Notes on a tea"
    [*_, last] = await platform.log.read_stream(TEMPLATES_STREAM)
    assert last.data["registered_by"].startswith("key:") and last.tenant == "platform"
    # Refusals name the field.
    refusals = [
        (NEW_TEMPLATE.replace("per_run: 0.02", "per_run: -1"), "cost.per_run"),
        (NEW_TEMPLATE.replace("tier: basic", "tier: gold"), "tier"),
        (NEW_TEMPLATE.replace("category: writing", "category: writing\nowner: me"), "owner"),
        (NEW_TEMPLATE.replace("workflow_id: kam_quick_brief", "workflow_id: nowhere"), "workflow_id"),
        (NEW_TEMPLATE.replace("id: 7", "id: 8").replace("tea_tasting_notes", "quick_brief"), "name"),
        (NEW_TEMPLATE.replace("default: friendly", "enum: [calm], default: friendly"), "parameters"),
        (NEW_TEMPLATE.replace("type: object\n", "type: array\n", 1), "parameters"),
        ("- just\n- a list\n", "$"),
        ("id: [unclosed", "$"),
    ]
    for text, named in refusals:
        status, body = await platform.call("POST", "/api/templates", "admin", data=text)
        assert status == 400 and body["message"].startswith(named), (named, body)
    # Only admins register.
    status, body = await platform.call("POST", "/api/templates", "alpha", data=NEW_TEMPLATE)
    assert status == 403


@pytest.mark.parametrize(
    ("name", "parameters", "text_fields"),
    [
        ("quick_brief", {"tone": "formal"}, ["brief"]),
        ("article_draft", {"depth": "brief", "sources": 1}, ["draft"]),
        ("course_outline_builder", {"structure_type": "course", "depth": "brief"}, ["draft"]),
        ("comprehensive_report_pipeline", {"depth": "detailed", "sources": 10}, ["body", "summary"]),
    ],
)
async def test_each_bundled_template_runs_on_the_platform(
    platform: Platform, name: str, parameters: dict[str, Any], text_fields: list[str]
) -> None:
    status, template = await platform.call("GET", f"/api/templates/{name}", "alpha")
    assert status == 200, template
    request = {
        "title": "Market Analysis for AI Tools",
        "description": "Need comprehensive analysis of the vendors, their pricing and adoption.",
        "urgency": "high",
        "category": "research",
    }
    state = await platform.run(template["workflow_id"], execute_body(template, parameters, request))
    assert state is not None and state.status == "COMPLETED", state and state.error
    output = state.output
    # The output is the deliverable: a JSON object about this request, its texts written.
    assert isinstance(output, dict) and output["request_id"] == "req_0123456789abcdef01234567"
    assert output["template"] == name
    for text_field in text_fields:
        assert isinstance(output[text_field], str) and output[text_field].strip(), text_field
    assert output["generator"] == "builtin"
    assert sorted(state.steps) == sorted(template["stages"])
    if "outline" in output:
        outline = output["outline"]
        assert outline["sections"] >= 3
        assert outline["structure"] is not None or str(outline["structure_ref"]).startswith("raw://")
    if name == "comprehensive_report_pipeline":
        # The outline went through the granulator's handshake protocol, validated, and was acknowledged.
        assert output["outline"]["validation"]["passed"] is True
        assert state.steps["acknowledge"].output["status"] == "acknowledged"
        assert "Market Analysis for AI Tools" in output["title"]


async def test_kam_executes_a_request_with_a_bundled_template_to_its_deliverable(platform: Platform) -> None:
    # The contract between the templates and KAM's execution: KAM's own execute body starts the
    # template's workflow, and the workflow's output becomes the request's deliverable.
    status, created = await platform.call(
        "POST",
        "/api/requests",
        "alpha",
        {"title": "Tea market in Europe", "description": "Who buys loose-leaf tea, and why.", "category": "research"},
    )
    assert status == 201, created
    path = f"/api/requests/{created['request_id']}"
    status, body = await platform.call("PUT", path, "admin", {"template_id": 5, "parameters": {"depth": "standard"}})
    assert status == 200, body
    status, started = await platform.call("POST", f"{path}/execute", "admin", {})
    assert status == 202, started
    async with asyncio.timeout(30):
        while True:
            status, body = await platform.call("GET", path, "alpha")
            if body["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.05)
    assert body["status"] == "completed", body
    assert body["metrics"]["stages_completed"] == 5
    contents = []
    for deliverable_id in body["deliverable_ids"]:
        status, content = await platform.call("GET", f"/api/deliverables/{deliverable_id}", "alpha")
        assert status == 200, content
        contents.append(content)
    # The workflow's output is the report; the outline it refers to in Raw is delivered too.
    [report] = [c for c in contents if c.get("template") == "comprehensive_report_pipeline"]
    assert report["request_id"] == created["request_id"] and report["summary"] and report["body"]
    assert report["outline"]["sections"] >= 3 and report["outline"]["validation"]["passed"] is True
    assert any(len(c.get("sections", [])) == report["outline"]["sections"] for c in contents if c is not report)
