"""End to end: a workflow's ``task`` step runs a granulation over NATS through the workflow service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from granulator_support import running_granulator

from nexus.auth import issue_key
from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw import resolve
from nexus.raw.memory import MemoryRaw
from nexus.services.workflow.bootstrap import bootstrap as workflow_bootstrap
from nexus.services.workflow.context import CTX_KEY
from nexus.services.workflow.settings import load_settings as workflow_settings

pytestmark = pytest.mark.nats

WORKFLOW = {
    "id": "granulation",
    "steps": [
        {
            "id": "outline",
            "type": "task",
            "service": "granulator",
            "command": "granulate",
            "input_map": {
                "input": {
                    "topic": "$.input.topic",
                    "structure_type": "$.input.structure_type",
                    "depth": "$.input.depth",
                    "sources": "$.input.sources",
                },
                "validation": "$.input.validation",
            },
            "timeout_seconds": 20,
        }
    ],
}


async def test_workflow_task_step_granulates_over_nats(
    tmp_path: Path, nats_server: str, memory_log: MemoryEventLog
) -> None:
    raw = MemoryRaw()
    granulator_bus = await JetStreamBus.connect(nats_server, name="granulator-e2e")
    workflow_bus = await JetStreamBus.connect(nats_server, name="workflow-e2e")
    settings = workflow_settings(
        {"NEXUS_WORKFLOW_PORT": "0", "NEXUS_DATA_DIR": str(tmp_path / "wf"), "NEXUS_WORKFLOW_BUNDLED": "none"}
    )
    workflow = await workflow_bootstrap(settings, log=memory_log, bus=workflow_bus, raw=raw, optional_modules=False)
    await workflow.start()
    key = await issue_key(memory_log, "client", "granulator-e2e")
    http = aiohttp.ClientSession(headers={"x-service-key": key.secret})
    base = f"http://127.0.0.1:{workflow.port}"
    try:
        async with running_granulator(tmp_path / "g", log=memory_log, raw=raw, bus=granulator_bus):

            async def post(path: str, body: Any) -> Any:
                async with http.post(base + path, json=body) as resp:
                    assert resp.status < 300, await resp.text()
                    return await resp.json()

            async def run(inputs: dict[str, Any]) -> Any:
                execution = await post("/executions", {"workflow_id": "granulation", "input": inputs})
                async with asyncio.timeout(30):
                    async for state in workflow.app[CTX_KEY].engine.watch(execution["id"]):
                        if state.final:
                            return state
                return None

            await post("/workflows", WORKFLOW)

            # A small structure comes back inline.
            small = await run(
                {
                    "topic": "Tea",
                    "structure_type": "article",
                    "depth": "brief",
                    "sources": 0,
                    "validation": {"enabled": True, "level": 1, "threshold": 80.0, "max_retries": 1},
                }
            )
            assert small.status == "COMPLETED", small.error
            assert small.output["output"]["title"] == "Tea" and small.output["output_ref"] is None
            assert small.output["validation"]["questions_asked"]

            # A large one comes back as a raw:// reference the workflow's caller can resolve.
            large = await run(
                {
                    "topic": "AI Tools Market Analysis",
                    "structure_type": "book",
                    "depth": "detailed",
                    "sources": 12,
                    "validation": {"enabled": True, "level": 2, "threshold": 90.0, "max_retries": 2},
                }
            )
            assert large.status == "COMPLETED", large.error
            assert large.output["output"] is None and large.output["output_ref"].startswith("raw://")
            structure = await resolve(raw, large.output["output_ref"])
            assert structure["structure_type"] == "book" and len(structure["sections"]) >= 8
            assert large.output["validation"]["passed"] is True
            # The workflow's retry of the same step key would get this first result, not a second granulation.
            events = await memory_log.read_stream(f"granulator-task-{large.execution_id}:outline")
            assert [e.type for e in events] == ["nexus.workflow.task.completed"]
            # A request the granulator refuses fails the step with the reason, not retried.
            refused = await run({"topic": "Tea", "structure_type": "sonnet", "depth": "brief", "sources": 0})
            assert refused.status == "FAILED" and "unknown_structure_type" in refused.error
            await http.close()
            # The workflow stops before the granulator, which closes the shared log.
            await workflow.stop()
    finally:
        await http.close()
        await workflow.stop()
