"""The platform as a user runs it: ``nexus up`` as a process, a client key from ``nexus keys create``, a
workflow registered over HTTP and run with ``nexus workflow run --wait``, its events on NATS, Ctrl-C."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from e2e_platform import SCHEMA, TRIGGER, WORKFLOW, anomaly, within
from platform_process import nexus, running_platform
from processes import alive, descendants, listening

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def test_nexus_up_runs_a_registered_workflow_whose_events_reach_nats_then_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    async with running_platform(tmp_path) as up:
        started = set(descendants(up.process.pid))
        key = await up.client_key()
        # A downstream user's JetStream consumer on the workflow events, before anything runs.
        nc = await nats.connect(up.nats_url)
        try:
            js = nc.jetstream()
            downstream = await js.pull_subscribe("nexus.evt.workflow.>", durable="e2e-up", stream="NEXUS_EVT")
            await up.register(key, ("/schemas", SCHEMA), ("/workflows", WORKFLOW))

            run_env = {**up.env, "NEXUS_SERVICE_KEY": key}
            payload = {"title": "Quake", "confidence": 0.97, "region": "tohoku"}
            code, out, err = await nexus(
                "workflow", "run", "anomaly_job", "--input", json.dumps(payload), "--wait", env=run_env
            )
            assert code == 0, out + err
            execution_id = out.splitlines()[0].strip()
            assert "  status     COMPLETED" in out.splitlines(), out
            assert '"verdict": "confirmed: Quake"' in out
            assert up.calls == [payload]

            received: list[Any] = []

            async def until_completed() -> None:
                while True:
                    try:
                        messages = await downstream.fetch(batch=100, timeout=1)
                    except TimeoutError:  # nats-py raises its own subclass or the builtin one
                        continue
                    for msg in messages:
                        await msg.ack()
                        body = json.loads(msg.data)
                        if body.get("subject") == execution_id:
                            received.append(msg)
                            if body["type"] == "nexus.workflow.execution.completed":
                                return

            await within(until_completed(), "the execution's events on nexus.evt.workflow.>")
        finally:
            await nc.close()
        types = [json.loads(m.data)["type"].removeprefix("nexus.workflow.") for m in received]
        assert types == [
            "execution.queued",
            "execution.claimed",
            "step.started",
            "step.completed",
            "execution.completed",
        ]
        assert all(m.headers["Nats-Msg-Id"] == json.loads(m.data)["id"] for m in received)
        assert json.loads(received[-1].data)["data"]["output"] == {"verdict": "confirmed: Quake"}

        # Ctrl-C: everything stops within 5 seconds and no process or port is left behind.
        stop_started = time.monotonic()
        up.process.send_signal(signal.SIGINT)
        status = await within(up.process.wait(), "nexus up stopping after SIGINT", 8)
        elapsed = time.monotonic() - stop_started
        assert up.drainer is not None
        await within(up.drainer, "the end of nexus up's output", 5)
        output = "".join(up.output)
        assert status == 0, output
        assert elapsed < 5.0, output
        assert "Nexus stopped." in output
        assert [pid for pid in started if alive(pid)] == []
        assert not any(listening(port) for port in (up.nats_port, *up.ports.values()))


async def test_under_nexus_up_an_external_event_starts_its_workflow_through_a_trigger(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as up:
        key = await up.client_key()
        await up.register(key, ("/schemas", SCHEMA), ("/workflows", WORKFLOW), ("/triggers", TRIGGER))
        # The detector gets its own NATS credential, bound to client e2e: its events are e2e's.
        code, out, err = await nexus("keys", "create", "--producer", "gaia", "--tenant", "e2e", env=up.env)
        assert code == 0, err
        producer = dict(line.split(": ", 1) for line in out.splitlines()[1:])
        nc = await nats.connect(up.nats_url)
        detector = await nats.connect(
            f"nats://127.0.0.1:{up.nats_port}",
            user=producer["user"],
            password=producer["password"],
            inbox_prefix=producer["inbox prefix"],
        )
        try:
            completed = await nc.subscribe("nexus.evt.workflow.execution.completed")
            js = nc.jetstream()
            quake = anomaly("Quake")
            await detector.jetstream().publish("nexus.ext.gaia.anomaly", json.dumps(quake).encode())
            try:
                message = await completed.next_msg(timeout=6)
            except TimeoutError:  # nats-py raises its own subclass or the builtin one
                consumers = [c.name for c in await js.consumers_info("NEXUS_EXT")]
                raise AssertionError(
                    f"no execution completed within 6 s of an external event; NEXUS_EXT consumers: {consumers}"
                ) from None
        finally:
            await detector.close()
            await nc.close()
        assert json.loads(message.data)["data"]["output"] == {"verdict": "confirmed: Quake"}
        assert up.calls == [{"title": "Quake", "confidence": 0.97, "region": "tohoku"}]
