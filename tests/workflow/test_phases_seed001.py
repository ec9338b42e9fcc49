"""Seed 001's seven phases to the letter (issue 16): the chain, phase 4's routing, phase 6's
learning, phase 7's fee, ledger and proof packet, updates that are sent even when a phase fails
and go only to the user's own client, and the connections and queue on an endpoint.

A workflow service with every optional module over a memory log; the phases' ``core`` work is a
stub's ``/generate`` (which a test can make fail). Clients ``acme`` and ``rival`` have their own
keys, ``ops`` an admin key. External events are appended to ``ext-<source>`` as the ingest does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.cli.commands.proof import verify_packet
from nexus.cli.main import main as nexus_main
from nexus.config import ConfigError
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import ExtIngest, ingested_id, register_producer
from nexus.proto import encode_event, new_event
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.workflow import api
from nexus.services.workflow.claims import fee_of
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.engine import WorkflowEngine
from nexus.services.workflow.phases import PHASE_REACTOR, PhaseReactor, learning_stream, phases_stream
from nexus.services.workflow.registry import WorkflowRegistry
from nexus.services.workflow.settings import load_settings
from nexus.services.workflow.view import ExecutionView

ACME, RIVAL = "acme", "rival"


@dataclass
class Core:
    """The stub content service: ``/generate`` answers, or fails with 500 while ``failing``."""

    failing: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def generate(request: web.Request) -> web.Response:
            self.calls.append(await request.json())
            if self.failing:
                return web.json_response({"error": "down"}, status=500)
            return web.json_response({"text": "a report"})

        app = web.Application()
        app.router.add_post("/generate", generate)
        return app


@dataclass
class Platform:
    url: str
    log: MemoryEventLog
    engine: WorkflowEngine
    service: Service
    core: Core
    keys: dict[str, str]
    bus: MemoryBus

    def headers(self, tenant: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[tenant]}

    async def call(self, tenant: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers=self.headers(tenant)) as http,
            http.request(method, self.url + path, json=body) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def phase(self, tenant: str, n: int, body: dict[str, Any], status: int = 202) -> Any:
        got, answer = await self.call(tenant, "POST", f"/api/v1/workflow/phase/{n}", body)
        assert got == status, (n, got, answer)
        return answer

    def executions(self, workflow_id: str, tenant: str = ACME, status: str | None = None) -> list[Any]:
        return [
            s
            for s in self.engine.list(workflow_id=workflow_id, tenant=tenant, limit=1000)
            if status is None or s.status == status
        ]

    async def stream(self, tenant: str, user_id: str) -> list[Any]:
        return await self.log.read_stream(phases_stream(tenant, user_id))

    async def of_type(self, tenant: str, user_id: str, suffix: str) -> list[dict[str, Any]]:
        return [e.data for e in await self.stream(tenant, user_id) if e.type.endswith(suffix)]


Starter = Callable[..., Awaitable[Platform]]


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Starter]:
    """``await platform(**env)``: the platform with extra settings from ``env``."""
    cleanup: list[Callable[[], Awaitable[None]]] = []

    async def start(**env: str) -> Platform:
        core = Core()
        stub = TestServer(core.app(), host="127.0.0.1", port=0)
        await stub.start_server()
        cleanup.append(stub.close)
        stub_url = str(stub.make_url("")).rstrip("/")
        settings = load_settings({"NEXUS_SERVICE_CORE": stub_url, "NEXUS_DATA_DIR": str(tmp_path), **env})
        log = MemoryEventLog()
        registry = WorkflowRegistry(log, settings.services)
        view = ExecutionView(log)
        view.add_listener(registry.apply)
        await view.load()
        view.start_tail()
        engine = WorkflowEngine(log, registry, view, services=settings.services, concurrency=64)
        await engine.start_processing()
        ctx = WorkflowContext(
            settings=settings, log=log, bus=None, raw=MemoryRaw(), engine=engine, registry=registry, views=view
        )
        bus = MemoryBus()
        await bus.ensure_streams()
        service = Service(settings, log=log, bus=bus)
        api.install(service, ctx)
        api.install_optional(service, ctx)
        server = TestServer(service.app, host="127.0.0.1", port=0)
        await server.start_server()

        async def stop() -> None:
            await server.close()
            await engine.stop_processing()
            await view.stop()

        cleanup.append(stop)
        keys = {t: (await issue_key(log, "client", t)).secret for t in (ACME, RIVAL)}
        keys["ops"] = (await issue_key(log, "client", "ops", scopes=("admin",))).secret
        return Platform(str(server.make_url("")).rstrip("/"), log, engine, service, core, keys, bus)

    yield start
    for step in reversed(cleanup):
        await step()


async def _until(predicate: Callable[[], Any], seconds: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def _settled(p: Platform) -> None:
    """Wait until the phase reactor has handled every event of its types appended so far."""
    mine = await p.log.read_all(1, types=PhaseReactor.TYPES)
    reactor = p.service.app[PHASE_REACTOR]
    await _until(lambda: not mine or reactor.position >= (mine[-1].position or 0))


async def _ext(p: Platform, source: str, kind: str, data: dict[str, Any], tenant: str | None = ACME) -> None:
    """An external CloudEvent as the ingest stores it: stream ext-<source>, the source's tenant."""
    event = new_event(kind, data, source=f"https://{source}.example", tenant=tenant)
    stored = msgspec.structs.replace(event, id=ingested_id(event.source, event.id), extevent=kind.replace(".", "_"))
    await p.log.append(f"ext-{source}", [stored])


# -- the chain ------------------------------------------------------------------------------------


async def test_phases_1_to_4_chain_and_5_6_7_wait_for_their_own_triggers(platform: Starter) -> None:
    p = await platform()
    await p.phase(ACME, 1, {"user_id": "u-1", "sync_id": "s-1", "shop": "north"})
    # 1 -> 2 -> 3 -> 4, each started from a recorded trigger with the same user, sync and metadata.
    await _until(lambda: p.executions("phase_4", status="COMPLETED"))
    await _until(lambda: p.of_type(ACME, "u-1", "phase.updated"))
    await _until(
        lambda: _has(p.of_type(ACME, "u-1", "phase.updated"), lambda u: u["phase"] == 4 and u["part"] == "workflow")
    )
    await _settled(p)
    await asyncio.sleep(0.3)  # nothing more starts
    triggers = await p.of_type(ACME, "u-1", "phase.triggered")
    assert [t["phase"] for t in triggers] == [1, 2, 3, 4]
    assert all(t["sync_id"] == "s-1" and t["metadata"] == {"shop": "north"} for t in triggers)
    for n in (1, 2, 3, 4):
        assert len(p.executions(f"phase_{n}", status="COMPLETED")) == 1
    for n in (5, 6, 7):
        assert p.executions(f"phase_{n}") == [], n
    # No bundled trigger chains phases any more: only each phase's own trigger is registered.
    status, triggers_listed = await p.call("ops", "GET", "/triggers?tenant=platform")
    assert status == 200
    assert sorted(t["id"] for t in triggers_listed) == [f"phase_{n}_on_trigger" for n in range(1, 8)]
    # Phase 6 posted on its own: only phase 6 runs; nothing follows it.
    await p.phase(ACME, 6, {"user_id": "u-1", "claim_id": "c-9", "reason": "not eligible"})
    await _until(lambda: p.executions("phase_6", status="COMPLETED"))
    await _settled(p)
    await asyncio.sleep(0.3)
    assert p.executions("phase_7") == [] and p.executions("phase_5") == []


async def _has(values: Awaitable[list[dict[str, Any]]], check: Callable[[dict[str, Any]], bool]) -> bool:
    return any(check(v) for v in await values)


# -- phase 4 ----------------------------------------------------------------------------------------

MATCHES = [
    {
        "claim_id": "c-high",
        "confidence": 0.93,
        "claim_type": "lost_inventory",
        "amount": "120.00",
        "evidence": ["inv-1"],
    },
    {"claim_id": "c-edge", "confidence": "0.85", "claim_type": "damaged"},
    {"claim_id": "c-mid", "confidence": 0.70, "claim_type": "damaged", "amount": "40.50"},
    {"claim_id": "c-low-edge", "confidence": 0.5},
    {"claim_id": "c-low", "confidence": 0.49},
]


async def test_phase_4_routes_each_claim_by_confidence_and_a_confirmation_triggers_phase_5(
    platform: Starter,
) -> None:
    p = await platform()
    await p.phase(ACME, 1, {"user_id": "u-4"})
    async with aiohttp.ClientSession(headers=p.headers(ACME)) as http:
        ws = await http.ws_connect(p.url + "/users/u-4/ws")
        assert (await ws.receive_json())["type"] == "connected"
        answer = await p.phase(ACME, 4, {"user_id": "u-4", "sync_id": "m-1", "matches": MATCHES})
        routes = {u["claim_id"]: u["route"] for u in answer["updates"] if u["type"] == "claim.routed"}
        # >= 85%: auto-submit; 50-85%: smart prompt; < 50%: held (both edges on the upper side).
        assert routes == {
            "c-high": "auto_submit",
            "c-edge": "auto_submit",
            "c-mid": "smart_prompt",
            "c-low-edge": "smart_prompt",
            "c-low": "held",
        }
        [summary] = [u for u in answer["updates"] if u["type"] == "phase.updated" and u["phase"] == 4]
        assert summary["counts"] == {"auto_submit": 2, "smart_prompt": 2, "held": 1, "skipped": 0}
        # Each auto-submitted claim triggered phase 5 for itself (and only those two).
        await _until(lambda: len(p.executions("phase_5", status="COMPLETED")) == 2)
        assert sorted(s.input["metadata"]["claim_id"] for s in p.executions("phase_5")) == ["c-edge", "c-high"]
        # The smart prompts reached the user's socket, with the question and where to confirm.
        prompts = await _receive(ws, lambda m: m["type"] == "claim.prompted", 2)
        assert {m["claim_id"] for m in prompts} == {"c-mid", "c-low-edge"}
        mid = next(m for m in prompts if m["claim_id"] == "c-mid")
        assert "70%" in mid["question"] and mid["confirm_path"] == "/api/v1/users/u-4/claims/c-mid/confirm"
        # The user confirms c-mid: phase 5 for it.
        status, body = await p.call(ACME, "POST", mid["confirm_path"])
        assert status == 202 and body["status"] == "submitted", body
        await _until(lambda: len(p.executions("phase_5", status="COMPLETED")) == 3)
        await _receive(ws, lambda m: m["type"] == "claim.submitted" and m["claim_id"] == "c-mid", 1)
        await ws.close()
    # Again, or a held claim, or an unknown one: refused, nothing recorded.
    assert (await p.call(ACME, "POST", mid["confirm_path"]))[0] == 409
    assert (await p.call(ACME, "POST", "/api/v1/users/u-4/claims/c-low/confirm"))[0] == 409
    assert (await p.call(ACME, "POST", "/api/v1/users/u-4/claims/nope/confirm"))[0] == 404
    # Another client cannot confirm acme's claim: its user does not exist for it.
    assert (await p.call(RIVAL, "POST", "/api/v1/users/u-4/claims/c-low-edge/confirm"))[0] == 404
    status, listed = await p.call(ACME, "GET", "/api/v1/users/u-4/claims")
    assert status == 200
    assert {c["claim_id"]: c["status"] for c in listed["claims"]} == {
        "c-high": "submitted",
        "c-edge": "submitted",
        "c-mid": "submitted",
        "c-low-edge": "awaiting_confirmation",
        "c-low": "held",
    }
    # Bad matches are a 400 naming the field; nothing is recorded.
    before = len(await p.stream(ACME, "u-4"))
    for bad, word in (
        ({"matches": [{"claim_id": "x", "confidence": 85}]}, "matches[0].confidence"),
        ({"matches": [{"confidence": 0.9}]}, "matches[0].claim_id"),
        ({"matches": "all"}, "matches"),
    ):
        status, body = await p.call(ACME, "POST", "/api/v1/workflow/phase/4", {"user_id": "u-4", **bad})
        assert status == 400 and word in body["error"], body
    assert len(await p.stream(ACME, "u-4")) == before


async def _receive(ws: Any, wanted: Callable[[dict[str, Any]], bool], n: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while len(found) < n:
        message = await ws.receive_json(timeout=10)
        if wanted(message):
            found.append(message)
    return found


async def test_the_routing_thresholds_are_settings(platform: Starter) -> None:
    p = await platform(NEXUS_PHASE_AUTO_SUBMIT_CONFIDENCE="0.95", NEXUS_PHASE_PROMPT_CONFIDENCE="0.6")
    await p.phase(ACME, 1, {"user_id": "u-t"})
    answer = await p.phase(ACME, 4, {"user_id": "u-t", "matches": MATCHES})
    routes = {u["claim_id"]: u["route"] for u in answer["updates"] if u["type"] == "claim.routed"}
    assert routes == {
        "c-high": "smart_prompt",
        "c-edge": "smart_prompt",
        "c-mid": "smart_prompt",
        "c-low-edge": "held",
        "c-low": "held",
    }
    # Read exactly and checked at start.
    settings = load_settings({"NEXUS_PHASE_AUTO_SUBMIT_CONFIDENCE": "0.9", "NEXUS_PHASE_FEE_RATE": "0.15"})
    assert settings.phase_auto_submit_confidence == Decimal("0.9") and settings.phase_fee_rate == Decimal("0.15")
    for env, word in (
        ({"NEXUS_PHASE_PROMPT_CONFIDENCE": "0.9"}, "lower than"),
        ({"NEXUS_PHASE_AUTO_SUBMIT_CONFIDENCE": "85"}, "from 0 to 1"),
        ({"NEXUS_PHASE_FEE_RATE": "a fifth"}, "not a decimal"),
    ):
        with pytest.raises(ConfigError, match=word):
            load_settings(env)


# -- phase 6 ----------------------------------------------------------------------------------------


async def test_phase_6_records_the_rejection_for_learning_and_lowers_that_claim_types_confidence(
    platform: Starter,
) -> None:
    p = await platform()
    await p.phase(ACME, 1, {"user_id": "u-6"})
    body = {"user_id": "u-6", "claim_id": "c-1", "claim_type": "lost_inventory", "reason": "outside the window"}
    answer = await p.phase(ACME, 6, body)
    assert [u["type"] for u in answer["updates"]] == ["claim.decided", "phase.updated"]
    # The learning stream (per client) has the rejection with its reason, for a learning consumer.
    learned = await _until(lambda: p.log.read_stream(learning_stream(ACME)))
    assert [(e.type, e.data["claim_type"], e.data["reason"]) for e in learned] == [
        ("nexus.workflow.learning.rejection", "lost_inventory", "outside the window")
    ]
    assert learned[0].tenant == ACME and await p.log.read_stream(learning_stream(RIVAL)) == []
    # 0.87 of that type is now routed at 0.82 (one rejection: -0.05): a prompt, not a submission.
    matches = [
        {"claim_id": "c-2", "confidence": 0.87, "claim_type": "lost_inventory"},
        {"claim_id": "c-3", "confidence": 0.87, "claim_type": "damaged"},
    ]
    answer = await p.phase(ACME, 4, {"user_id": "u-6", "matches": matches})
    routed = {u["claim_id"]: u for u in answer["updates"] if u["type"] == "claim.routed"}
    assert (routed["c-2"]["adjusted_confidence"], routed["c-2"]["route"]) == ("0.82", "smart_prompt")
    assert (routed["c-3"]["adjusted_confidence"], routed["c-3"]["route"]) == ("0.87", "auto_submit")
    # The penalty stops at NEXUS_PHASE_MAX_PENALTY (0.25) however many rejections there are.
    for i in range(7):
        await p.phase(ACME, 6, {**body, "claim_id": f"r-{i}"})
    await _until(lambda: _count(p.log.read_stream(learning_stream(ACME)), 8))
    answer = await p.phase(ACME, 4, {"user_id": "u-6", "matches": [{**matches[0], "claim_id": "c-4"}]})
    [routed_again] = [u for u in answer["updates"] if u["type"] == "claim.routed"]
    assert routed_again["adjusted_confidence"] == "0.62"
    # Rival's claims of the same type are not affected by acme's rejections.
    await p.phase(RIVAL, 1, {"user_id": "u-6"})
    answer = await p.phase(RIVAL, 4, {"user_id": "u-6", "matches": [matches[0]]})
    assert [u["route"] for u in answer["updates"] if u["type"] == "claim.routed"] == ["auto_submit"]
    # A rejection needs its reason.
    status, refused = await p.call(ACME, "POST", "/api/v1/workflow/phase/6", {"user_id": "u-6", "claim_id": "c-1"})
    assert status == 400 and "reason" in refused["error"]


async def _count(events: Awaitable[list[Any]], n: int) -> bool:
    return len(await events) >= n


# -- phase 7 ----------------------------------------------------------------------------------------


def test_the_fee_is_exact_and_rounded_half_to_even() -> None:
    assert fee_of(Decimal("100.00"), Decimal("0.20")) == (Decimal("20.00"), Decimal("80.00"))
    assert fee_of(Decimal("0.13"), Decimal("0.20")) == (Decimal("0.03"), Decimal("0.10"))  # 0.026
    # Half a cent goes to the even cent: 0.045 -> 0.04, 0.015 -> 0.02 (half-up would give 0.05).
    assert fee_of(Decimal("0.30"), Decimal("0.15")) == (Decimal("0.04"), Decimal("0.26"))
    assert fee_of(Decimal("0.10"), Decimal("0.15")) == (Decimal("0.02"), Decimal("0.08"))
    # Binary floats would not be exact here: 0.1 + 0.2 of a payout.
    assert fee_of(Decimal("1234567.89"), Decimal("0.20")) == (Decimal("246913.58"), Decimal("987654.31"))


async def test_phase_7_takes_the_fee_records_the_ledger_and_serves_a_proof_packet_nexus_verifies(
    platform: Starter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = await platform()
    await p.phase(ACME, 1, {"user_id": "u-7"})
    match = {"claim_id": "c-1", "confidence": 0.9, "claim_type": "damaged", "amount": "250.00", "evidence": ["d-1"]}
    await p.phase(ACME, 4, {"user_id": "u-7", "matches": [match]})
    await p.phase(ACME, 6, {"user_id": "u-7", "claim_id": "c-1", "reason": "photo missing"})
    await p.phase(ACME, 5, {"user_id": "u-7", "claim_id": "c-1", "submission_id": "amz-2"})
    answer = await p.phase(ACME, 7, {"user_id": "u-7", "claim_id": "c-1", "amount": "250.05", "payout_id": "po-1"})
    [paid] = [u for u in answer["updates"] if u["type"] == "claim.paid"]
    assert (paid["amount"], paid["fee"], paid["net"], paid["rounding"]) == (
        "250.05",
        "50.01",
        "200.04",
        "ROUND_HALF_EVEN",
    )
    await p.phase(ACME, 7, {"user_id": "u-7", "claim_id": "c-2", "amount": 10, "currency": "USD"})
    # A paid claim is final.
    status, body = await p.call(
        ACME, "POST", "/api/v1/workflow/phase/7", {"user_id": "u-7", "claim_id": "c-1", "amount": "1"}
    )
    assert status == 409 and "paid already" in body["error"]
    for bad, word in ({"amount": "12.345"}, "two decimal"), ({"amount": -5}, "greater than 0"), ({}, "amount"):
        status, body = await p.call(
            ACME, "POST", "/api/v1/workflow/phase/7", {"user_id": "u-7", "claim_id": "c-3", **bad}
        )
        assert status == 400 and word in body["error"], body
    # The ledger: one entry per payout, with running totals.
    status, ledger = await p.call(ACME, "GET", "/api/v1/users/u-7/ledger")
    assert status == 200 and ledger["fee_rate"] == "0.20" and ledger["rounding"] == "ROUND_HALF_EVEN"
    assert [(e["claim_id"], e["amount"], e["fee"], e["net"]) for e in ledger["entries"]] == [
        ("c-1", "250.05", "50.01", "200.04"),
        ("c-2", "10.00", "2.00", "8.00"),
    ]
    assert ledger["totals"] == {"USD": {"amount": "260.05", "fees": "52.01", "net": "208.04"}}
    # The proof packet: evidence, rejection, submission, approval, payout, ledger; its root is recorded.
    await _until(lambda: _has(p.of_type(ACME, "u-7", "claim.proved"), lambda d: d["claim_id"] == "c-1"))
    status, packet = await p.call(ACME, "GET", "/api/v1/users/u-7/claims/c-1/proof")
    assert status == 200, packet
    roles = [item["role"] for item in packet["events"]]
    assert roles == ["evidence", "submission", "decision", "submission", "decision", "payout", "ledger"]
    assert packet["recorded"]["root"] == packet["manifest"]["root"]
    assert verify_packet(packet) == []
    # Offline: `nexus proof verify FILE` says OK (0), and FAIL (1) for a packet whose payout was changed.
    good = tmp_path / "proof.json"
    good.write_text(json.dumps(packet))
    assert nexus_main(["proof", "verify", str(good)]) == 0
    assert "OK claim c-1 of user u-7: 7 events" in capsys.readouterr().out
    tampered = json.loads(json.dumps(packet))
    payout = next(i for i in tampered["events"] if i["role"] == "payout")
    payout["event"] = payout["event"].replace('"fee":"50.01"', '"fee":"5.01"')
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    assert nexus_main(["proof", "verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "do not match the manifest" in out and "chain hash" in out and "is not 0.20 of 250.05" in out
    # A root the verifier trusts from elsewhere must match.
    assert nexus_main(["proof", "verify", str(good), "--root", "00" * 32]) == 1
    assert (tmp_path / "x.json").write_text("{}") and nexus_main(["proof", "verify", str(tmp_path / "x.json")]) == 2
    # Other clients: 404, exactly as for no claim.
    assert (await p.call(RIVAL, "GET", "/api/v1/users/u-7/claims/c-1/proof"))[0] == 404
    assert (await p.call(RIVAL, "GET", "/api/v1/users/u-7/ledger"))[0] == 404
    assert (await p.call(ACME, "GET", "/api/v1/users/u-7/claims/none/proof"))[0] == 404


# -- external triggers ----------------------------------------------------------------------------


async def test_external_cloud_events_trigger_phases_5_6_and_7_and_a_bad_one_still_updates_the_user(
    platform: Starter,
) -> None:
    p = await platform()
    await p.phase(ACME, 1, {"user_id": "u-x"})
    await _ext(p, "amazon", "claim.submitted", {"user_id": "u-x", "claim_id": "c-1", "claim_type": "fees"})
    await _ext(p, "amazon", "claim.rejected", {"user_id": "u-x", "claim_id": "c-1", "reason": "duplicate"})
    await _ext(p, "stripe", "payout.received", {"user_id": "u-x", "claim_id": "c-2", "amount": "80.00"})
    # A payout without its amount: recorded with a failed update naming what is missing.
    await _ext(p, "stripe", "payout.received", {"user_id": "u-x", "claim_id": "c-3"})
    for n in (5, 6, 7):
        await _until(lambda n=n: p.executions(f"phase_{n}"))
    await _settled(p)
    triggers = await p.of_type(ACME, "u-x", "phase.triggered")
    assert sorted(t["phase"] for t in triggers if t["phase"] > 4) == [5, 6, 7, 7]
    work = [u for u in await p.of_type(ACME, "u-x", "phase.updated") if u["part"] == "work" and u["phase"] > 4]
    assert [(u["phase"], u["status"]) for u in work] == [
        (5, "completed"),
        (6, "completed"),
        (7, "completed"),
        (7, "failed"),
    ]
    assert "amount" in work[-1]["message"]
    [submitted] = await p.of_type(ACME, "u-x", "claim.submitted")
    assert submitted["origin"] == "ext:amazon"
    [paid] = await p.of_type(ACME, "u-x", "claim.paid")
    assert (paid["fee"], paid["net"]) == ("16.00", "64.00")
    # Handled once: the reactor's records have deterministic ids, so a replay adds nothing.
    count = len(await p.stream(ACME, "u-x"))
    reactor = p.service.app[PHASE_REACTOR]
    for event in await p.log.read_all(1):
        await reactor.handle(event)
    assert len(await p.stream(ACME, "u-x")) == count
    # An event of a source bound to no client belongs to the platform, never to acme's user.
    await _ext(p, "stray", "claim.rejected", {"user_id": "u-x", "claim_id": "c-9", "reason": "r"}, tenant=None)
    await _settled(p)
    assert "c-9" not in {d.get("claim_id") for d in await p.of_type(ACME, "u-x", "claim.decided")}


# -- updates --------------------------------------------------------------------------------------


async def test_each_phase_updates_the_user_even_when_its_work_fails(platform: Starter) -> None:
    p = await platform()
    p.core.failing = True  # the phases' workflows all fail (after their retries)
    async with aiohttp.ClientSession(headers=p.headers(ACME)) as http:
        await p.phase(ACME, 1, {"user_id": "u-f"})
        ws = await http.ws_connect(p.url + "/users/u-f/ws")
        assert (await ws.receive_json())["type"] == "connected"
        [failed] = await _receive(ws, lambda m: m["type"] == "phase.updated" and m["part"] == "workflow", 1)
        assert failed["phase"] == 1 and failed["status"] == "failed" and "500" in failed["message"]
        assert p.executions("phase_2") == []  # a failed phase does not chain
        # A payout reported from outside with a malformed amount: the user is told why.
        await _ext(p, "stripe", "payout.received", {"user_id": "u-f", "claim_id": "c-1", "amount": "ten"})
        [bad] = await _receive(ws, lambda m: m["type"] == "phase.updated" and m["part"] == "work", 1)
        assert bad["phase"] == 7 and bad["status"] == "failed" and "amount" in bad["message"]
        await ws.close()


async def test_updates_go_only_to_the_users_client_and_the_connections_and_queue_are_reported(
    platform: Starter,
) -> None:
    p = await platform()
    await p.phase(ACME, 1, {"user_id": "u-1"})
    async with (
        aiohttp.ClientSession(headers=p.headers(ACME)) as acme,
        aiohttp.ClientSession(headers=p.headers(RIVAL)) as rival,
    ):
        acme_ws = await acme.ws_connect(p.url + "/users/u-1/ws")
        assert (await acme_ws.receive_json())["type"] == "connected"
        # Rival's key on acme's user: 404 on every route, as for no user.
        for path in ("/users/u-1/ws", "/users/u-1/updates", "/api/v1/users/u-1/claims", "/api/v1/users/u-1/ledger"):
            async with rival.get(p.url + path) as r:
                assert r.status == 404, path
        # Rival's own u-1 is another user: its payout never reaches acme's socket.
        await p.phase(RIVAL, 7, {"user_id": "u-1", "claim_id": "rc", "amount": "5.00"})
        rival_ws = await rival.ws_connect(p.url + "/users/u-1/ws")
        assert (await rival_ws.receive_json())["type"] == "connected"
        # The counts: each client sees its own connections; the admin sees all; the queue beside them.
        status, stats = await p.call(ACME, "GET", "/api/v1/workflow/stats")
        assert status == 200 and stats["connected_clients"] == 1 and stats["connections"]["websocket"] == 1
        assert "queued" in stats["queue"] and "statuses" in stats["queue"]
        status, everything = await p.call("ops", "GET", "/api/v1/workflow/stats")
        assert everything["connected_clients"] == 2 and "replica" in everything["queue"]
        async with aiohttp.ClientSession() as anonymous, anonymous.get(p.url + "/metrics") as r:
            metrics = await r.text()
        assert 'nexus_workflow_live_connections{transport="websocket"} 2.0' in metrics
        assert "nexus_workflow_queue_depth" in metrics and "nexus_workflow_phase_updates_total" in metrics
        await acme_ws.send_str("ping")
        messages = []
        while True:
            message = await acme_ws.receive_json(timeout=5)
            if message["type"] == "pong":
                break
            messages.append(message)
        assert all(m["user_id"] == "u-1" and m.get("claim_id") != "rc" for m in messages)
        await acme_ws.close()
        await rival_ws.close()


async def test_a_payout_published_on_nexus_ext_is_ingested_and_runs_phase_7_for_the_sources_client(
    platform: Starter,
) -> None:
    p = await platform()
    await p.phase(ACME, 1, {"user_id": "u-e"})
    # The source "stripe" is bound to acme (nexus keys create --producer stripe --client acme).
    await register_producer(p.log, "stripe", ACME)
    ingest = ExtIngest(p.bus, p.log)
    await ingest.start()
    try:
        payout = new_event(
            "payout.received",
            {"user_id": "u-e", "claim_id": "c-1", "amount": "99.99", "tenant": "rival"},
            source="https://stripe.example/webhooks",
        )
        await p.bus.publish("nexus.ext.stripe.payout_received", encode_event(payout))
        paid = await _until(lambda: p.of_type(ACME, "u-e", "claim.paid"))
    finally:
        await ingest.stop()
    assert [(d["amount"], d["fee"], d["net"]) for d in paid] == [("99.99", "20.00", "79.99")]  # 19.998
    await _until(lambda: p.executions("phase_7", status="COMPLETED"))
    # What the producer claimed about the tenant changes nothing: rival has no such user.
    assert await p.stream(RIVAL, "u-e") == []


async def test_a_phase_whose_workflow_cannot_start_still_updates_its_user(platform: Starter) -> None:
    # One start per phase trigger at a time, and the bucket barely refills: the second is refused.
    p = await platform(NEXUS_TRIGGER_RATE="0.001", NEXUS_TRIGGER_BURST="1")
    await p.phase(ACME, 6, {"user_id": "u-r", "claim_id": "c-1", "reason": "late"})
    await p.phase(ACME, 6, {"user_id": "u-r", "claim_id": "c-2", "reason": "late"})

    async def workflow_updates() -> list[Any]:
        found = await _matching(p.of_type(ACME, "u-r", "phase.updated"), lambda u: u["part"] == "workflow")
        return found if len(found) == 2 else []

    updates = await _until(workflow_updates)
    # The first phase 6 ran; the second's workflow was refused, and its user was told so.
    assert sorted((u["phase"], u["status"]) for u in updates) == [(6, "completed"), (6, "failed")]
    [refused] = [u for u in updates if u["status"] == "failed"]
    assert "was not started" in refused["message"] and "rate" in refused["message"]
    # The work itself was done for both: the rejections are recorded.
    assert [d["claim_id"] for d in await p.of_type(ACME, "u-r", "claim.decided")] == ["c-1", "c-2"]


async def _matching(values: Awaitable[list[dict[str, Any]]], check: Callable[[dict[str, Any]], bool]) -> list[Any]:
    return [v for v in await values if check(v)]
