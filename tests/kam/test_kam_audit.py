"""KAM's audit: every call recorded (route templates, never a secret), read back per tenant,
batched without losing a record at shutdown, and never failing a call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from accounts_harness import PASSWORD, Kam, running_kam
from inprocess import KAM_ADMIN

from nexus.eventlog import ANY
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.kam import KamAuditRecorded
from nexus.services.kam.audit import AuditIndex
from nexus.services.kam.state import AUDIT_STREAM


@pytest.fixture
async def kam(tmp_path: Path) -> AsyncIterator[Kam]:
    async with running_kam(tmp_path) as kam:
        yield kam


async def audit(kam: Kam, token: str, **query: Any) -> Any:
    answer = await kam.http.get(
        kam.url + "/api/audit", params={k: str(v) for k, v in query.items()}, headers={"X-Session-Token": token}
    )
    async with answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def test_every_call_is_recorded_by_route_template_and_never_with_a_secret(kam: Kam) -> None:
    admin = await kam.admin()
    user, acme = await kam.client_with_user(admin, "acme", "ana@acme.example")
    secret = await kam.issue_key(admin, "acme")
    assert (await kam.login("ana@acme.example", "wrong password!")).status == 401
    assert (await kam.call("GET", "/api/kam/clients/acme/users", token=acme)).status == 200
    assert (await kam.call("GET", "/v1/whoami", key=secret)).status == 200
    assert (await kam.call("GET", "/api/clients/acme?secret=x", token="sess_bad")).status == 401
    async with kam.http.get(kam.url + "/healthz") as probe:
        assert probe.status == 200

    page = await audit(kam, admin)
    records = page["records"]
    seen = {(r["actor"], r["method"], r["route"], r["resource"], r["status"]) for r in records}
    key_id = secret.split("_", 1)[1].split(".", 1)[0]
    assert {
        ("user:admin", "POST", "/api/auth/login", None, 200),
        ("user:admin", "POST", "/api/clients", None, 201),
        ("user:admin", "POST", "/api/clients/{client_id}/users", "acme", 201),
        (f"user:{user['id']}", "POST", "/api/auth/login", None, 200),
        ("anonymous", "POST", "/api/auth/login", None, 401),
        (f"user:{user['id']}", "GET", "/api/kam/clients/{client_id}/users", "acme", 200),
        (f"key:{key_id}", "GET", "/v1/whoami", None, 200),
        ("anonymous", "GET", "/api/clients/{client_id}", "acme", 401),
    } <= seen
    assert all(r["route"] != "/healthz" for r in records)
    assert [r["seq"] for r in records] == sorted((r["seq"] for r in records), reverse=True)
    assert {r["client_id"] for r in records if r["actor"] == f"user:{user['id']}"} == {"acme"}
    # Nothing secret anywhere in the stream: no password, token, key secret, or query string.
    stored = json.dumps([e.data for e in await kam.log.read_stream(AUDIT_STREAM)])
    for secret_text in (PASSWORD, KAM_ADMIN[1], admin, acme, secret, "wrong password!", "secret=x"):
        assert secret_text not in stored


async def test_a_client_sees_only_its_own_tenants_records(kam: Kam) -> None:
    admin = await kam.admin()
    ana, acme = await kam.client_with_user(admin, "acme")
    bob, beta = await kam.client_with_user(admin, "beta")
    assert (await kam.call("GET", "/api/clients/beta/users", token=beta)).status == 200

    own = await audit(kam, acme)
    assert own["records"] and {r["client_id"] for r in own["records"]} == {"acme"}
    assert {r["actor"] for r in own["records"]} == {f"user:{ana['id']}"}
    # Asking for another client's records shows none of them.
    assert (await audit(kam, acme, client_id="beta"))["records"] == []
    assert (await audit(kam, acme, actor=f"user:{bob['id']}"))["records"] == []
    # The admin sees everybody's, and filters.
    everything = await audit(kam, admin)
    assert {"acme", "beta", "platform"} <= {r["client_id"] for r in everything["records"]}
    betas = await audit(kam, admin, client_id="beta")
    assert betas["records"] and {r["client_id"] for r in betas["records"]} == {"beta"}
    # A key without audit:read is refused.
    key = await kam.issue_key(admin, "acme", ["requests:read"])
    assert (await kam.call("GET", "/api/audit", key=key)).status == 403


async def test_pages_and_time_filters(kam: Kam) -> None:
    admin = await kam.admin()
    for _ in range(5):
        assert (await kam.call("GET", "/api/clients", token=admin)).status == 200
    first = await audit(kam, admin, limit=2)
    assert len(first["records"]) == 2 and first["next_cursor"]
    second = await audit(kam, admin, limit=2, cursor=first["next_cursor"])
    assert max(r["seq"] for r in second["records"]) < min(r["seq"] for r in first["records"])
    assert (await audit(kam, admin, **{"from": "2999-01-01T00:00:00Z"}))["records"] == []
    assert len((await audit(kam, admin, to="2999-01-01T00:00:00Z"))["records"]) >= 7
    bad = await kam.call("GET", "/api/audit?from=yesterday", token=admin)
    assert bad.status == 400 and "from" in bad.body["message"]
    assert (await kam.call("GET", "/api/audit?limit=0", token=admin)).status == 400


async def test_a_failed_append_fails_no_call_and_the_records_follow_later(
    kam: Kam, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await kam.admin()
    log = kam.service.log
    real = log.append

    refused: list[int] = []

    async def failing(stream: str, events: Sequence[CloudEvent], expected_version: int = ANY) -> list[CloudEvent]:
        if stream == AUDIT_STREAM:
            refused.append(len(events))
            raise RuntimeError("the log is down for the audit")
        return await real(stream, events, expected_version)

    monkeypatch.setattr(log, "append", failing)
    for _ in range(3):
        assert (await kam.call("GET", "/api/clients", token=admin)).status == 200
    for _ in range(100):  # the background flush tries (every 20 ms here) and fails
        if sum(refused) >= 3:
            break
        await asyncio.sleep(0.02)
    assert sum(refused) >= 3
    monkeypatch.setattr(log, "append", real)
    # The records kept while the appends failed are written once the log takes them again.
    page = await audit(kam, admin)
    assert sum(r["route"] == "/api/clients" and r["method"] == "GET" for r in page["records"]) == 3


async def test_records_pending_at_shutdown_are_written(tmp_path: Path) -> None:
    async with running_kam(tmp_path, NEXUS_KAM_AUDIT_FLUSH_SECONDS="60") as kam:
        admin = await kam.admin()
        for _ in range(4):
            assert (await kam.call("GET", "/api/clients", token=admin)).status == 200
        assert await kam.log.read_stream(AUDIT_STREAM) == []  # still waiting for their batch
    stored = [msgspec.convert(e.data, KamAuditRecorded) for e in await kam.log.read_stream(AUDIT_STREAM)]
    assert [(r.method, r.route) for r in stored] == [("POST", "/api/auth/login")] + [("GET", "/api/clients")] * 4


def test_the_index_keeps_the_newest_records() -> None:
    index = AuditIndex(max_records=10)
    for version in range(1, 26):
        data = KamAuditRecorded(
            actor="a", client_id="acme" if version % 2 else "beta", method="GET", route="/r", status=200
        )
        event = new_event("nexus.kam.audit.recorded", data, source="test")
        index.add(msgspec.structs.replace(event, streamversion=version))
    assert len(index.entries) <= 10 and index.entries[-1][0] == 25
    page = index.query(client_id="acme", limit=100)
    assert [r.seq for r in page.records] == [v for v in range(25, 0, -1) if v % 2 and v >= page.oldest_seq]
