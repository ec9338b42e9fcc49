"""Providers (seed 004's shape): what a document may say, the operators, the routes, the bundled ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from providers_harness import ALPHA, BETA, Platform, eq, platform, provider

from nexus.auth import PLATFORM_TENANT
from nexus.services.studio.providers import (
    BUNDLED_PROVIDERS,
    ProviderError,
    matches,
    parse_provider,
    read_directory,
    register_bundled,
)
from nexus.services.studio.state import PROVIDERS_STREAM

SEED_YAML = b"""
provider:
  id: book-writer
  name: Book Writing Assistant
  type: hybrid  # namespace + processor

workflows:
  - workflow_id: book_chapter_processing
    triggers:
      - event: onCreate
        conditions:
          - field: metadata.type
            operator: eq
            value: chapter
      - event: onUpdate
        conditions:
          - field: metadata.status
            operator: eq
            value: draft
    priority: 10

  - workflow_id: book_outline_generation
    triggers:
      - event: onCreate
        conditions:
          - field: metadata.type
            operator: eq
            value: outline_request
    priority: 5
"""


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Platform]:
    async for value in platform(tmp_path):
        yield value


def test_the_seeds_provider_is_accepted_as_written() -> None:
    from nexus.yamlsafe import load_yaml

    document = parse_provider(load_yaml(SEED_YAML))
    assert document["provider"] == {"id": "book-writer", "name": "Book Writing Assistant", "type": "hybrid"}
    assert [w["workflow_id"] for w in document["workflows"]] == ["book_chapter_processing", "book_outline_generation"]
    assert document["workflows"][0]["triggers"][1] == {
        "event": "onUpdate",
        "conditions": [{"field": "metadata.status", "operator": "eq", "value": "draft"}],
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    document = provider("p1", "wf", "onCreate", eq("metadata.type", "x"))
    target: Any = document
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is _DROP:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return document


_DROP = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("provider.id", _DROP, "provider.id"),
        ("provider.id", "bad id!", "provider.id"),
        ("provider.name", 3, "provider.name"),
        ("workflows", [], "workflows"),
        ("workflows.0.workflow_id", _DROP, "workflows[0].workflow_id"),
        ("workflows.0.priority", 101, "workflows[0].priority"),
        ("workflows.0.priority", True, "workflows[0].priority"),
        ("workflows.0.triggers.0.event", "onRead", "workflows[0].triggers[0].event"),
        ("workflows.0.triggers.0.conditions.0.operator", "like", "workflows[0].triggers[0].conditions[0].operator"),
        ("workflows.0.triggers.0.conditions.0.field", "a..b", "workflows[0].triggers[0].conditions[0].field"),
        ("workflows.0.triggers.0.conditions.0.value", _DROP, "workflows[0].triggers[0].conditions[0].value"),
        ("workflows.0.triggers.0.extra", 1, "workflows[0].triggers[0].extra"),
        ("surprise", 1, "surprise"),
    ],
)
def test_a_bad_provider_is_refused_naming_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(ProviderError) as caught:
        parse_provider(_with(path, value))
    assert caught.value.field == field


BLOB = {
    "content_type": "text/markdown",
    "size": 120,
    "metadata": {"type": "chapter", "n": 3, "tags": ["a", "b"], "title": "The Sea"},
}


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    [
        ("metadata.type", "eq", "chapter", True),
        ("metadata.type", "eq", "outline", False),
        ("metadata.type", "ne", "outline", True),
        ("metadata.missing", "ne", "x", True),
        ("metadata.missing", "eq", None, False),
        ("metadata.type", "in", ["chapter", "outline"], True),
        ("metadata.type", "in", ["outline"], False),
        ("metadata.type", "exists", True, True),
        ("metadata.missing", "exists", False, True),
        ("metadata.missing", "exists", True, False),
        ("metadata.n", "gt", 2, True),
        ("metadata.n", "lt", 3, False),
        ("metadata.n", "gt", "2", False),
        ("metadata.title", "gt", "A", True),
        ("size", "lt", 1000, True),
        ("content_type", "contains", "markdown", True),
        ("metadata.tags", "contains", "b", True),
        ("metadata.tags", "contains", "c", False),
        ("metadata.tags.0", "eq", "a", True),
        ("metadata.n", "contains", 3, False),
    ],
)
def test_operators(field: str, operator: str, value: Any, expected: bool) -> None:
    assert matches([{"field": field, "operator": operator, "value": value}], BLOB) is expected


def test_every_condition_must_hold() -> None:
    conditions = [eq("metadata.type", "chapter"), {"field": "metadata.n", "operator": "gt", "value": 5}]
    assert not matches(conditions, BLOB)
    assert matches([], BLOB)


def test_the_bundled_providers_include_the_book_writer() -> None:
    documents = {d["provider"]["id"]: d for d in read_directory(BUNDLED_PROVIDERS)}
    writer = documents["book-writer"]["workflows"][0]
    assert writer["workflow_id"] == "book_chapter_expansion"
    assert writer["triggers"] == [
        {"event": "onCreate", "conditions": [{"field": "metadata.type", "operator": "eq", "value": "chapter"}]}
    ]


async def test_bundled_providers_are_registered_once(env: Platform) -> None:
    assert (PLATFORM_TENANT, "book-writer") in env.state().providers
    before = len(await env.log.read_stream(PROVIDERS_STREAM))
    assert await register_bundled(env.log) == []
    await env.stop_studio(env.studio)
    await env.start_studio()
    assert len(await env.log.read_stream(PROVIDERS_STREAM)) == before


async def test_register_list_and_remove_over_http(env: Platform) -> None:
    yaml_text = (
        b"provider: {id: mine, name: Mine, type: processor}\n"
        b"workflows:\n  - workflow_id: wf_delta\n    triggers: [{event: onUpdate}]\n"
    )
    status, body = await env.call("POST", "/providers", ALPHA, raw=yaml_text)
    assert status == 201, body
    assert body["owner"] == ALPHA and body["workflows"][0]["priority"] == 50
    status, body = await env.call("POST", "/providers", "admin", provider("shared", "wf_other"))
    assert status == 201 and body["owner"] == PLATFORM_TENANT

    _, listed = await env.call("GET", "/providers", ALPHA)
    assert {(p["owner"], p["provider"]["id"]) for p in listed["providers"]} >= {
        (ALPHA, "mine"),
        (PLATFORM_TENANT, "shared"),
    }
    _, theirs = await env.call("GET", "/providers", BETA)
    assert (ALPHA, "mine") not in {(p["owner"], p["provider"]["id"]) for p in theirs["providers"]}

    # Beta cannot remove alpha's provider (it has none of that id), nor register for alpha.
    status, _ = await env.call("DELETE", "/providers/mine", BETA)
    assert status == 404
    status, _ = await env.call("POST", f"/providers?owner={ALPHA}", BETA, provider("x", "wf_other"))
    assert status == 400
    status, _ = await env.call("DELETE", "/providers/mine", ALPHA)
    assert status == 204
    assert (ALPHA, "mine") not in env.state().providers


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"provider: {id: p, name: P, type: t}\nworkflows: []\n", "workflows"),
        (
            b'{"provider": {"id": "p", "name": "P", "type": "t"}, '
            b'"workflows": [{"workflow_id": "w", "triggers": [{"event": "onMove"}]}]}',
            "workflows[0].triggers[0].event",
        ),
        (b"a: &x [1]\nb: *x\n", "alias"),
        (b"[", "provider"),
    ],
)
async def test_a_bad_provider_gets_400_naming_it(env: Platform, body: bytes, named: str) -> None:
    status, answer = await env.call("POST", "/providers", ALPHA, raw=body)
    assert status == 400, answer
    assert named in answer["message"]


async def test_the_cli_adds_lists_and_removes_providers(
    env: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nexus.cli.main import main

    monkeypatch.setenv("NEXUS_STUDIO_URL", env.url())
    monkeypatch.setenv("NEXUS_SERVICE_KEY", env.headers[ALPHA]["X-API-Key"])
    path = tmp_path / "p.yaml"
    path.write_bytes(SEED_YAML)
    assert await asyncio.to_thread(main, ["studio", "providers", "add", str(path)]) == 0
    assert (ALPHA, "book-writer") in env.state().providers
    assert await asyncio.to_thread(main, ["studio", "providers", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"{ALPHA}\tbook-writer\tbook_chapter_processing\tpriority 10\tonCreate,onUpdate" in listed
    path.write_bytes(b"provider: {id: p, name: P, type: t}\nworkflows: []\n")
    assert await asyncio.to_thread(main, ["studio", "providers", "add", str(path)]) == 1
    assert "workflows" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["studio", "providers", "remove", "book-writer"]) == 0
    assert (ALPHA, "book-writer") not in env.state().providers
    monkeypatch.setenv("NEXUS_SERVICE_KEY", "nxk_bad.bad")
    assert await asyncio.to_thread(main, ["studio", "providers", "list"]) == 4
