"""Delegated tokens: minted by a workflow replica for an execution's tenant, verified by every KeyView."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nexus.auth import (
    AUTH,
    DELEGATED_SCOPE,
    DELEGATION_KEY_PUBLISHED,
    KEYS_STREAM,
    DelegationSigner,
    KeyView,
    issue_key,
    require_api_key,
)
from nexus.eventlog.memory import MemoryEventLog


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def test_a_valid_token_is_a_client_of_the_tenant_scoped_delegated(memory_log: MemoryEventLog) -> None:
    clock = Clock()
    signer = await DelegationSigner.publish(memory_log, "workflow/r1", clock=clock)
    token = signer.mint("acme", execution_id="ex-1", audience="granulator")
    assert token.startswith(f"nxd_{signer.key_id}.")
    # Another service's view of the same log verifies it without asking the replica.
    view = KeyView(memory_log, audience="granulator", clock=clock)
    info = await view.verify(token)
    assert info is not None
    assert (info.kind, info.owner, info.tenant, info.scopes) == ("client", "acme", "acme", (DELEGATED_SCOPE,))
    assert info.execution_id == "ex-1" and info.key_id == signer.key_id and not info.is_admin
    # The platform's own executions get tokens too.
    platform = await view.verify(signer.mint("platform", execution_id="ex-2", audience="granulator"))
    assert platform is not None and platform.tenant == "platform"
    # Only the public key is in the log; the payload names tenant, execution, audience, times.
    [published] = [e for e in await memory_log.read_stream(KEYS_STREAM) if e.type == DELEGATION_KEY_PUBLISHED]
    assert set(published.data if isinstance(published.data, dict) else published.data.__struct_fields__) >= {
        "key_id",
        "owner",
        "public_key",
    }
    claims = _payload(token)
    assert claims["tenant"] == "acme" and claims["execution_id"] == "ex-1" and claims["audience"] == "granulator"
    assert claims["expires_at"] - claims["issued_at"] == 300


async def test_an_expired_token_is_refused(memory_log: MemoryEventLog) -> None:
    clock = Clock()
    signer = await DelegationSigner.publish(memory_log, "workflow/r1", ttl_seconds=60, clock=clock)
    token = signer.mint("acme", execution_id="ex-1", audience="granulator")
    view = KeyView(memory_log, clock=clock)
    clock.now += 59
    assert await view.verify(token) is not None
    clock.now += 1
    assert await view.verify(token) is None


async def test_a_tampered_payload_is_refused(memory_log: MemoryEventLog) -> None:
    clock = Clock()
    signer = await DelegationSigner.publish(memory_log, "workflow/r1", clock=clock)
    token = signer.mint("bob", execution_id="ex-1", audience="granulator")
    head, payload, signature = token.split(".")
    claims = _payload(token)
    claims["tenant"] = "alice"
    forged = f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"
    view = KeyView(memory_log, clock=clock)
    assert await view.verify(token) is not None
    assert await view.verify(forged) is None
    # A flipped signature byte, a truncated one, or a signature moved to another payload: refused.
    raw_sig = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw_sig[0] ^= 1
    assert await view.verify(f"{head}.{payload}.{_b64(bytes(raw_sig))}") is None
    assert await view.verify(f"{head}.{payload}.{signature[:-4]}") is None
    other = signer.mint("alice", execution_id="ex-1", audience="granulator")
    assert await view.verify(f"{head}.{other.split('.')[1]}.{signature}") is None
    # Garbage in every part is refused, not an exception.
    for junk in (f"{head}.!!!.{signature}", f"{head}.{payload}.***", f"{head}.{payload}", f"{head}..{signature}"):
        assert await view.verify(junk) is None


async def test_a_token_of_an_unknown_signer_is_refused(memory_log: MemoryEventLog) -> None:
    # A signer whose public key is in another platform's log (never published here).
    clock = Clock()
    elsewhere = MemoryEventLog()
    stranger = await DelegationSigner.publish(elsewhere, "workflow/r1", clock=clock)
    ours = await DelegationSigner.publish(memory_log, "workflow/r1", clock=clock)
    view = KeyView(memory_log, clock=clock)
    token = stranger.mint("acme", execution_id="ex-1", audience="granulator")
    assert await view.verify(token) is None
    # Nor does a known key id make another signer's signature valid.
    _, payload, signature = token.split(".")
    assert await view.verify(f"nxd_{ours.key_id}.{payload}.{signature}") is None
    await elsewhere.close()


async def test_a_revoked_signer_s_tokens_are_refused_and_a_restart_revokes_the_killed_run_s(
    memory_log: MemoryEventLog,
) -> None:
    clock = Clock()
    view = KeyView(memory_log, clock=clock)
    first = await DelegationSigner.publish(memory_log, "workflow/r1", clock=clock)
    neighbour = await DelegationSigner.publish(memory_log, "workflow/r2", clock=clock)
    token = first.mint("acme", execution_id="ex-1", audience="kam")
    assert await view.verify(token) is not None
    # The replica is killed and starts again under the same name: its old signer is revoked.
    second = await DelegationSigner.publish(memory_log, "workflow/r1", clock=clock)
    assert await view.verify(token) is None
    assert view.signer(first.key_id).revoked_by.data["reason"] == "replaced at start"
    assert await view.verify(neighbour.mint("acme", execution_id="ex-1", audience="kam")) is not None
    later = second.mint("acme", execution_id="ex-1", audience="kam")
    assert await view.verify(later) is not None
    # A graceful stop revokes it and forgets the private key.
    await second.revoke(memory_log)
    assert await view.verify(later) is None
    with pytest.raises(RuntimeError, match="revoked"):
        second.mint("acme", execution_id="ex-1", audience="kam")


async def test_wrong_prefix_or_audience_is_refused(memory_log: MemoryEventLog) -> None:
    clock = Clock()
    signer = await DelegationSigner.publish(memory_log, "workflow/r1", clock=clock)
    token = signer.mint("acme", execution_id="ex-1", audience="studio")
    view = KeyView(memory_log, clock=clock)
    assert await view.verify(token) is not None
    for prefix in ("nxk_", "nxw_", "NXD_", "nxd-", ""):
        assert await view.verify(prefix + token.removeprefix("nxd_")) is None
    assert await KeyView(memory_log, audience="granulator", clock=clock).verify(token) is None
    assert await KeyView(memory_log, audience="studio", clock=clock).verify(token) is not None
    # A huge string is refused before any decoding.
    assert await view.verify(token + "A" * 10_000) is None


async def test_a_token_claiming_a_long_life_or_a_future_issue_is_refused(memory_log: MemoryEventLog) -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="lifetime"):
        await DelegationSigner.publish(memory_log, "workflow/r1", ttl_seconds=86_400)
    signer = await DelegationSigner.publish(memory_log, "workflow/r1", clock=clock)
    view = KeyView(memory_log, clock=clock)
    clock.now += 3600
    future = signer.mint("acme", execution_id="ex-1", audience="kam")
    clock.now -= 3600
    assert await view.verify(future) is None


async def test_the_client_guard_accepts_a_delegated_token(memory_log: MemoryEventLog) -> None:
    signer = await DelegationSigner.publish(memory_log, "workflow/r1")
    worker = await issue_key(memory_log, "worker", "w1")
    view = KeyView(memory_log)

    async def whoami(request: web.Request) -> web.Response:
        info = request[AUTH]
        return web.json_response({"tenant": info.tenant, "execution_id": info.execution_id})

    app = web.Application()
    app.router.add_get("/me", require_api_key(view)(whoami))
    async with TestClient(TestServer(app)) as client:
        token = signer.mint("acme", execution_id="ex-9", audience="kam")
        response = await client.get("/me", headers={"X-API-Key": token})
        assert response.status == 200 and await response.json() == {"tenant": "acme", "execution_id": "ex-9"}
        await signer.revoke(memory_log)
        assert (await client.get("/me", headers={"X-API-Key": token})).status == 401
        assert (await client.get("/me", headers={"X-API-Key": worker.secret})).status == 403
