"""External event → ingest → log → relay → NEXUS_EVT → trigger consumer → workflow execution, over a
real nats-server, with the producer and a downstream consumer speaking plain nats-py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from e2e_platform import EXT_SOURCE, Platform, anomaly, expected_input, within

from nexus.ingest import ingested_id
from nexus.proto import decode_event

pytestmark = pytest.mark.nats


async def dead_letters(platform: Platform) -> asyncio.Queue[Any]:
    """A core subscription to the ingest's dead-letter subject."""
    assert platform.nc is not None
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await queue.put(msg)

    await platform.nc.subscribe("nexus.dlq.nexus-ingest", cb=on_msg)
    await platform.nc.flush()
    return queue


async def test_an_external_event_starts_its_workflow_once_and_bad_input_is_dead_lettered(platform: Platform) -> None:
    next_completion = await platform.completions()
    dead = await dead_letters(platform)
    quake = anomaly("Quake")
    await platform.produce(quake)

    completed = await next_completion()
    [execution] = await platform.executions()
    assert execution["status"] == "COMPLETED", execution
    assert execution["input"] == expected_input(quake)
    assert execution["output"] == {"verdict": "confirmed: Quake"}
    assert completed["data"]["execution_id"] == execution["id"]
    assert platform.stub.calls == [expected_input(quake)]
    # The log holds the external event once, under the id derived from source + id, and the
    # trigger's firing names the execution it started.
    assert platform.log is not None
    [stored] = await platform.log.read_stream("ext-gaia")
    assert stored.id == ingested_id(EXT_SOURCE, quake["id"]) and stored.causationid == quake["id"]
    assert stored.extevent == "anomaly" and stored.data == quake["data"]
    fired = await platform.log.read_stream(f"trigger-e2e.gaia_anomaly-{stored.id}")
    assert [event.data["execution_id"] for event in fired] == [execution["id"]]
    assert execution["idempotency_key"] == stored.id

    # The producer sends the same CloudEvent again (JetStream stores it a second time: no
    # Nats-Msg-Id), then a low-severity event, then two malformed messages, then a valid event.
    await platform.produce(quake)
    tremor = anomaly("Tremor", "low")
    await platform.produce(tremor)
    await platform.produce(b"this is not a CloudEvent")
    half = {"specversion": "1.0", "id": "half-1", "source": EXT_SOURCE}
    await platform.produce(json.dumps(half).encode())
    landslide = anomaly("Landslide")
    await platform.produce(landslide)

    # Each consumer on the way handles its messages in order, so once the last event's
    # execution completed, every message before it was handled.
    completed = await next_completion()
    executions = await platform.executions()
    assert len(executions) == 2, executions
    [latest] = [e for e in executions if e["id"] == completed["data"]["execution_id"]]
    assert latest["status"] == "COMPLETED" and latest["input"] == expected_input(landslide)
    assert platform.stub.calls == [expected_input(quake), expected_input(landslide)]
    # The repeat was stored once; the low-severity event was ingested but started nothing.
    titles = [event.data["title"] for event in await platform.log.read_stream("ext-gaia")]
    assert titles == ["Quake", "Tremor", "Landslide"]
    tremor_id = ingested_id(EXT_SOURCE, tremor["id"])
    assert await platform.log.stream_version(f"trigger-e2e.gaia_anomaly-{tremor_id}") == 0

    letters = [await within(dead.get(), "a dead letter on nexus.dlq.nexus-ingest") for _ in range(2)]
    assert [m.data for m in letters] == [b"this is not a CloudEvent", json.dumps(half).encode()]
    for letter in letters:
        headers = letter.headers or {}
        assert headers["Nexus-Consumer"] == "nexus-ingest"
        assert headers["Nexus-Error"] and headers["Nexus-Error-Reason"], headers
        assert headers["Nexus-Original-Subject"] == "nexus.ext.gaia.anomaly"
        assert headers["Nexus-Deliveries"] == "1"
    # Each reason says what is wrong: not JSON; the missing attribute.
    assert "not valid JSON" in letters[0].headers["Nexus-Error-Reason"]
    assert "$.type" in letters[1].headers["Nexus-Error-Reason"]
    assert {letter.headers["Nexus-Error"] for letter in letters} == {"EnvelopeError"}
    assert dead.empty()
    assert platform.stub.calls == [expected_input(quake), expected_input(landslide)]


async def test_events_published_while_ingest_and_workflow_are_down_start_their_workflows_when_back(
    platform: Platform,
) -> None:
    next_completion = await platform.completions()
    await platform.stop_workflow()
    await platform.stop_ingest()
    events = [anomaly("Aftershock 1"), anomaly("Calm", "low"), anomaly("Aftershock 2")]
    for event in events:
        await platform.produce(event)
    assert platform.log is not None
    assert await platform.log.stream_version("ext-gaia") == 0  # nobody ingests them yet

    # The ingest comes back first: it ingests what waited in NEXUS_EXT, and the relay publishes
    # the events on NEXUS_EVT while the trigger consumer is still down.
    await platform.start_ingest()
    head = await within(_wait_stream(platform, "ext-gaia", 3), "the waiting events in the log")
    assert platform.relay is not None
    await within(platform.relay.wait_relayed(head), "the ingested events on NEXUS_EVT")
    assert platform.stub.calls == []

    # Then the workflow service: its durable trigger consumer gets them, each starts once.
    await platform.start_workflow()
    completions = [await next_completion() for _ in range(2)]
    executions = {e["id"]: e for e in await platform.executions()}
    assert set(executions) == {c["data"]["execution_id"] for c in completions}
    assert sorted(e["input"]["title"] for e in executions.values()) == ["Aftershock 1", "Aftershock 2"]
    assert all(e["status"] == "COMPLETED" for e in executions.values())
    assert sorted(call["title"] for call in platform.stub.calls) == ["Aftershock 1", "Aftershock 2"]


async def _wait_stream(platform: Platform, stream: str, count: int) -> int:
    """Wait until ``stream`` holds ``count`` events; the log position of the last one."""
    assert platform.log is not None
    async for event in platform.log.subscribe(1):
        if event.streamid == stream and event.streamversion == count:
            return int(event.position or 0)
    raise AssertionError("the log subscription ended")


async def test_a_downstream_nats_consumer_gets_each_execution_event_once(platform: Platform) -> None:
    assert platform.js is not None
    # A user's own durable JetStream consumer on the workflow events, created before anything runs.
    downstream = await platform.js.pull_subscribe("nexus.evt.workflow.>", durable="e2e-downstream", stream="NEXUS_EVT")
    next_completion = await platform.completions()
    quake = anomaly("Quake")
    await platform.produce(quake)
    execution_id = (await next_completion())["data"]["execution_id"]

    received: list[Any] = []

    async def collect_until_completed() -> None:
        while True:
            try:
                messages = await downstream.fetch(batch=100, timeout=1)
            except TimeoutError:  # nats-py raises its own subclass or the builtin one
                continue
            for msg in messages:
                await msg.ack()
                received.append(msg)
                body = json.loads(msg.data)
                if body["type"] == "nexus.workflow.execution.completed" and body["subject"] == execution_id:
                    return

    await within(collect_until_completed(), "the execution's events on nexus.evt.workflow.>")

    # The relay restarts (a deploy): it resumes after the last event NEXUS_EVT holds, and
    # JetStream de-duplicates by Nats-Msg-Id, so the consumer gets nothing twice.
    await platform.stop_relay()
    await platform.start_relay()
    assert platform.log is not None and platform.relay is not None
    await within(platform.relay.wait_relayed(await platform.log.head()), "the relay catching up")
    with pytest.raises(TimeoutError):
        while True:
            for msg in await downstream.fetch(batch=100, timeout=1.5):
                await msg.ack()
                received.append(msg)

    history = [event for event in await platform.log.read_stream(f"execution-{execution_id}")]
    mine = [m for m in received if json.loads(m.data).get("subject") == execution_id]
    # Exactly the execution's history, in order, each event once, as CloudEvents JSON with
    # Nats-Msg-Id = event id.
    assert [json.loads(m.data)["type"] for m in mine] == [e.type for e in history]
    assert [e.type.removeprefix("nexus.workflow.") for e in history] == [
        "execution.queued",
        "execution.claimed",
        "step.started",
        "step.completed",
        "execution.completed",
    ]
    for msg, stored in zip(mine, history, strict=True):
        body = json.loads(msg.data)
        assert body["specversion"] == "1.0" and body["datacontenttype"] == "application/json"
        assert {"id", "source", "type", "time", "data"} <= set(body)
        assert msg.headers["Nats-Msg-Id"] == body["id"] == stored.id
        assert msg.subject == "nexus.evt." + stored.type.removeprefix("nexus.")
        assert decode_event(msg.data) == stored
    ids = [m.headers["Nats-Msg-Id"] for m in received]
    assert len(ids) == len(set(ids)), "an event reached the downstream consumer twice"
    # The execution's input came from the external event through the trigger.
    assert history[0].data["input"] == expected_input(quake)
    assert history[0].data["trigger"]["trigger_id"] == "gaia_anomaly"


async def test_an_event_lost_from_nexus_evt_still_starts_its_workflow(platform: Platform) -> None:
    next_completion = await platform.completions()
    # A first event goes all the way, so the trigger consumer has acknowledged something.
    await platform.produce(anomaly("First"))
    await next_completion()
    await platform.stop_workflow()
    lost, kept = anomaly("Lost"), anomaly("Kept")
    await platform.produce(lost)
    await platform.produce(kept)
    head = await within(_wait_stream(platform, "ext-gaia", 3), "the new events in the log")
    assert platform.relay is not None and platform.js is not None
    await within(platform.relay.wait_relayed(head), "the new events on NEXUS_EVT")
    # JetStream loses the first of them (deleted here; a crash or a limit could lose it too).
    lost_id = ingested_id(EXT_SOURCE, lost["id"])
    info = await platform.js.stream_info("NEXUS_EVT")
    for seq in range(info.state.last_seq, info.state.first_seq - 1, -1):
        msg = await platform.js.get_msg("NEXUS_EVT", seq)
        if (msg.headers or {}).get("Nats-Msg-Id") == lost_id:
            assert await platform.js.delete_msg("NEXUS_EVT", seq)
            break
    else:
        raise AssertionError("the lost event is not in NEXUS_EVT")

    # The trigger consumer sees the hole in the log positions and reads the event from the log.
    await platform.start_workflow()
    completions = [await next_completion() for _ in range(2)]
    by_id = {e["id"]: e for e in await platform.executions()}
    assert sorted(by_id[c["data"]["execution_id"]]["input"]["title"] for c in completions) == ["Kept", "Lost"]
    assert len(by_id) == 3
