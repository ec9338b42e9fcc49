"""The queue: priority order, the global and per-workflow limits, and replicas sharing one log."""

from __future__ import annotations

import asyncio

from nexus.auth import issue_key
from nexus.eventlog import ANY
from nexus.eventlog.memory import MemoryEventLog


def hold_then_effect(workflow_id: str, **extra):
    return {
        "id": workflow_id,
        "steps": [
            {"id": "first", "service": "stub", "endpoint": "/effect", "input_map": {"name": "$.input.name"}},
            {"id": "hold", "service": "stub", "endpoint": "/hold"},
        ],
        **extra,
    }


async def test_higher_priority_starts_before_lower_priority_waiting_ones(workflow_service, stub, until):
    svc = await workflow_service(NEXUS_WORKFLOW_CONCURRENCY="1")
    await svc.post("/workflows", hold_then_effect("prio"))
    _, blocker = await svc.post("/executions", {"workflow_id": "prio", "input": {"name": "blocker"}})
    await until(lambda: stub.requests[f"{blocker['id']}:hold"] == 1)
    for name, priority in (("low", 10), ("high", 90), ("mid", 50), ("high2", 90), ("lowest", 0)):
        code, _ = await svc.post("/executions", {"workflow_id": "prio", "input": {"name": name}, "priority": priority})
        assert code == 202
    code, stats = await svc.get("/queue/stats")
    assert stats["queued"] == 5 and stats["queued_by_priority"] == {"90": 2, "50": 1, "10": 1, "0": 1}
    stub.release.set()
    await until(lambda: len(stub.effects) == 6 * 2)
    started = [entry["body"]["name"] for entry in stub.log if entry["path"] == "/effect" and entry["body"]]
    assert started == ["blocker", "high", "high2", "mid", "low", "lowest"]


async def test_max_concurrent_limits_a_workflow(workflow_service, stub, until):
    svc = await workflow_service()
    await svc.post("/workflows", hold_then_effect("limited", max_concurrent=2))
    await svc.post("/workflows", hold_then_effect("free"))
    ids = [
        (await svc.post("/executions", {"workflow_id": "limited", "input": {"name": str(i)}}))[1]["id"]
        for i in range(5)
    ]
    other = (await svc.post("/executions", {"workflow_id": "free", "input": {"name": "x"}}))[1]["id"]
    await until(lambda: stub.requests[f"{other}:hold"] == 1)
    await asyncio.sleep(0.2)
    assert sum(stub.requests[f"{i}:hold"] for i in ids) == 2
    _, stats = await svc.get("/queue/stats")
    assert stats["active_by_workflow"]["limited"] == 2 and stats["queued"] == 3
    stub.release.set()
    for execution_id in ids:
        assert (await svc.wait_final(execution_id)).status == "COMPLETED"


async def test_two_replicas_share_the_queue_and_each_execution_is_claimed_once(workflow_service, stub):
    log = MemoryEventLog()
    a = await workflow_service(log, NEXUS_WORKFLOW_REPLICA_ID="a")
    b = await workflow_service(log, NEXUS_WORKFLOW_REPLICA_ID="b")
    await a.post(
        "/workflows",
        {"id": "shared", "steps": [{"id": f"s{i}", "service": "stub", "endpoint": "/effect"} for i in range(3)]},
    )
    ids = []
    for n in range(60):
        svc = a if n % 2 else b
        ids.append((await svc.post("/executions", {"workflow_id": "shared", "input": {"n": n}}))[1]["id"])
    owners = set()
    for execution_id in ids:
        final = await a.wait_final(execution_id)
        assert final.status == "COMPLETED"
        events = await a.ctx.engine.history(execution_id)
        claims = [e for e in events if e.type == "nexus.workflow.execution.claimed"]
        assert len(claims) == 1
        owners.add(claims[0].data["owner"])
    assert owners == {"a", "b"}
    assert len(stub.effects) == 180 and all(n == 1 for n in stub.effects.values())


async def test_a_dead_replicas_executions_are_taken_over(workflow_service, stub, until):
    log = MemoryEventLog()
    a = await workflow_service(log, NEXUS_WORKFLOW_REPLICA_ID="a")
    await a.post(
        "/workflows",
        {
            "id": "long",
            "steps": [
                {"id": "first", "service": "stub", "endpoint": "/effect"},
                {"id": "slow", "service": "stub", "endpoint": "/slow/300"},
                {"id": "last", "service": "stub", "endpoint": "/effect"},
            ],
        },
    )
    ids = [(await a.post("/executions", {"workflow_id": "long", "input": {}}))[1]["id"] for _ in range(10)]
    await until(lambda: all(stub.requests[f"{i}:slow"] == 1 for i in ids))
    # Replica a dies: its drivers and its heartbeat stop mid-step.
    await a.ctx.engine.stop_processing()
    b = await workflow_service(log, NEXUS_WORKFLOW_REPLICA_ID="b")
    for execution_id in ids:
        final = await b.wait_final(execution_id, timeout=15)
        assert final.status == "COMPLETED" and final.owner == "b"
    # The step in flight when a died was sent again with the same key; its effect happened once.
    assert all(stub.requests[f"{i}:slow"] == 2 for i in ids)
    assert all(n == 1 for n in stub.effects.values()) and len(stub.effects) == 30
    # The replicas' own figures are an operator's: an admin key sees them.
    admin = await issue_key(log, "client", "ops", scopes=("admin",))
    async with b.http.get(f"{b.url}/queue/stats", headers={"x-service-key": admin.secret}) as response:
        stats = await response.json()
    assert stats["stats"]["takeovers"] == 10 and stats["replicas"]["a"]["alive"] is False
    # A client sees only its own executions' numbers, nothing of the replicas.
    _, own = await b.get("/queue/stats")
    assert "replicas" not in own and own["statuses"] == {"COMPLETED": 10}


class RecordingLog(MemoryEventLog):
    """A memory log that records the event types of every append, by stream."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[tuple[str, list[str]]] = []

    async def append(self, stream_id, events, expected_version=ANY):
        self.appends.append((stream_id, [e.type.removeprefix("nexus.workflow.") for e in events]))
        return await super().append(stream_id, events, expected_version)


async def test_a_start_with_a_free_slot_and_an_empty_queue_is_queued_and_claimed_in_one_append(workflow_service, stub):
    log = RecordingLog()
    svc = await workflow_service(log)
    await svc.post("/workflows", {"id": "direct", "steps": [{"id": "s0", "service": "stub", "endpoint": "/effect"}]})
    code, body = await svc.post("/executions", {"workflow_id": "direct", "input": {"n": 1}})
    assert code == 202
    assert (await svc.wait_final(body["id"])).status == "COMPLETED"
    appends = [types for stream, types in log.appends if stream == f"execution-{body['id']}"]
    assert appends == [
        ["execution.queued", "execution.claimed", "step.started"],
        ["step.completed", "execution.completed"],
    ]
    history = [e.type.removeprefix("nexus.workflow.") for e in await svc.ctx.engine.history(body["id"])]
    assert history == ["execution.queued", "execution.claimed", "step.started", "step.completed", "execution.completed"]
    assert stub.effects[f"{body['id']}:s0"] == 1


async def test_concurrent_starts_with_one_idempotency_key_make_one_execution(workflow_service, stub):
    svc = await workflow_service()
    await svc.post("/workflows", {"id": "once", "steps": [{"id": "s0", "service": "stub", "endpoint": "/effect"}]})
    answers = await asyncio.gather(
        *(
            svc.post("/executions", {"workflow_id": "once", "input": {"n": n}, "idempotency_key": "same"})
            for n in range(8)
        )
    )
    assert {code for code, _ in answers} == {202}
    ids = {body["id"] for _, body in answers}
    assert len(ids) == 1
    [execution_id] = ids
    assert (await svc.wait_final(execution_id)).status == "COMPLETED"
    events = await svc.ctx.engine.history(execution_id)
    assert [e.type for e in events].count("nexus.workflow.execution.queued") == 1
    assert [e.type for e in events].count("nexus.workflow.execution.claimed") == 1
    assert stub.effects[f"{execution_id}:s0"] == 1
    _, stats = await svc.get("/queue/stats")
    assert stats["statuses"] == {"COMPLETED": 1}
