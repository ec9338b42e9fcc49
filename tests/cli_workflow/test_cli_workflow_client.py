"""``nexus.client.WorkflowClient``, the library the ``nexus workflow`` and ``nexus demo`` commands use."""

from __future__ import annotations

import socket

import pytest

from nexus.client import EXECUTION_FINAL_STATUSES, WorkflowApiError, WorkflowClient

WORKFLOW = """
id: greet
steps:
  - id: hello
    service: echo
    endpoint: /echo
    input_map:
      greeting: "Hello {$.input.name}"
    retry: {max_attempts: 1}
output:
  message: $.steps.hello.output.echo.greeting
"""


async def test_register_start_follow_get_and_history(workflow_app) -> None:
    async with WorkflowClient(workflow_app.url, workflow_app.key) as client:
        stored = await client.register(WORKFLOW)
        assert (stored["id"], stored["version"]) == ("greet", 1)
        assert (await client.workflow("greet"))["steps"][0]["id"] == "hello"
        accepted = await client.start("greet", {"name": "Ada"}, idempotency_key="k1")
        # The same idempotency key is the same execution.
        assert (await client.start("greet", {"name": "Ada"}, idempotency_key="k1"))["id"] == accepted["id"]

        # Following: one state per transition (through the one SSE parser), the last one final.
        states = [state async for state in client.follow(accepted["id"])]
        assert states and states[-1]["status"] == "COMPLETED"
        assert all(s["status"] not in EXECUTION_FINAL_STATUSES for s in states[:-1])
        versions = [s["version"] for s in states]
        assert versions == sorted(set(versions))

        final = await client.get(accepted["id"])
        assert final["output"] == {"message": "Hello Ada"}
        history = await client.history(accepted["id"])
        assert history[0]["type"] == "nexus.workflow.execution.queued"
        assert history[-1]["type"] == "nexus.workflow.execution.completed"


async def test_errors_carry_status_and_body(workflow_app) -> None:
    async with WorkflowClient(workflow_app.url, workflow_app.key) as client:
        with pytest.raises(WorkflowApiError) as missing:
            await client.get("no-such-execution")
        assert missing.value.status == 404 and isinstance(missing.value.body, dict)
        with pytest.raises(WorkflowApiError) as stream_missing:
            async for _ in client.follow("no-such-execution"):
                pass
        assert stream_missing.value.status == 404
    async with WorkflowClient(workflow_app.url, "not-a-key") as client:
        with pytest.raises(WorkflowApiError) as refused:
            await client.get("anything")
        assert refused.value.status == 401


async def test_an_unreachable_service_is_status_0_with_its_cause() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with WorkflowClient(f"http://127.0.0.1:{port}", "key", timeout=5) as client:
        with pytest.raises(WorkflowApiError) as unreachable:
            await client.get("x")
    assert unreachable.value.status == 0
    assert isinstance(unreachable.value.__cause__, OSError)
    assert f"127.0.0.1:{port}" in str(unreachable.value)


def test_a_key_is_required() -> None:
    with pytest.raises(ValueError, match="service key"):
        WorkflowClient("http://127.0.0.1:1", "")


async def test_following_reconnects_when_the_stream_ends_before_a_final_state(monkeypatch) -> None:
    from nexus.cli.commands import workflow as command

    monkeypatch.setattr(command, "RECONNECT_SECONDS", 0.01)

    class EndsEarly(WorkflowClient):
        """A stream that breaks off twice (as after a restart) before it carries the final state."""

        def __init__(self) -> None:
            super().__init__("http://127.0.0.1:1", "key")
            self.streams = 0
            self.events = [{"type": "nexus.workflow.execution.queued", "time": "", "data": {}}]

        async def follow(self, execution_id):  # type: ignore[override]
            self.streams += 1
            if self.streams < 3:
                yield {"status": "RUNNING"}
                return
            self.events.append({"type": "nexus.workflow.execution.completed", "time": "", "data": {}})
            yield {"status": "COMPLETED", "output": {"ok": True}}

        async def get(self, execution_id):  # type: ignore[override]
            return {"status": "RUNNING"}

        async def history(self, execution_id):  # type: ignore[override]
            return list(self.events)

    class Lines:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            return None

    client, out = EndsEarly(), Lines()
    final = await command.follow_execution(client, "e1", out)
    assert final == {"status": "COMPLETED", "output": {"ok": True}}
    assert client.streams == 3
    # Each transition printed once, across the reconnections.
    assert out.text.count("execution.queued") == 1 and out.text.count("execution.completed") == 1
