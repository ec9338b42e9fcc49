"""A client's user manages its own client's API keys (the console's keys page); an API key never does.

A signed-in user of a client issues keys to that client with at most its session's scopes
(never ``admin``) and revokes them; another client's keys are 404, exactly as ones that do not
exist; an API key, whatever its scopes (an unscoped ``nexus keys create`` key included), issues
and revokes nothing, so a leaked key cannot mint more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from accounts_harness import Kam, running_kam

from nexus.auth import issue_key
from nexus.services.kam.context import CLIENT_SCOPES


@pytest.fixture
async def kam(tmp_path: Path) -> AsyncIterator[Kam]:
    async with running_kam(tmp_path) as kam:
        yield kam


async def test_a_clients_user_issues_keys_to_its_own_client_with_at_most_its_scopes(kam: Kam) -> None:
    admin = await kam.admin()
    user, acme = await kam.client_with_user(admin, "acme")
    # By default the key holds every scope the user's session holds, and the secret is shown once.
    issued = await kam.call("POST", "/api/clients/acme/keys", token=acme, json={"name": "nightly export"})
    assert issued.status == 201, issued.text
    assert issued.body["scopes"] == list(CLIENT_SCOPES) and issued.body["secret"].startswith("nxk_")
    whoami = await kam.call("GET", "/v1/whoami", key=issued.body["secret"])
    assert whoami.status == 200 and whoami.body["owner"] == "acme"
    # A narrower key is fine; admin, or a scope that does not exist, is refused naming it.
    narrow = await kam.call("POST", "/api/clients/acme/keys", token=acme, json={"scopes": ["requests:read"]})
    assert narrow.status == 201 and narrow.body["scopes"] == ["requests:read"]
    for scopes, word in ((["admin"], "admin"), (["requests:read", "keys:write"], "keys:write"), ([], "empty")):
        bad = await kam.call("POST", "/api/clients/acme/keys", token=acme, json={"scopes": scopes})
        assert bad.status == 400 and word in bad.body["message"], bad.text
    # The listing names who issued each key (the user), never a secret.
    listed = await kam.call("GET", "/api/clients/acme/keys", token=acme)
    assert [(k["name"], k["issued_by"]) for k in listed.body["keys"]] == [
        ("nightly export", f"user:{user['id']}"),
        ("", f"user:{user['id']}"),
    ]
    assert issued.body["secret"] not in listed.text


async def test_a_clients_user_revokes_its_own_clients_keys_and_reaches_no_other_clients(kam: Kam) -> None:
    admin = await kam.admin()
    _, acme = await kam.client_with_user(admin, "acme")
    _, beta = await kam.client_with_user(admin, "beta")
    secret = await kam.issue_key(admin, "acme")
    key_id = secret.split("_", 1)[1].split(".", 1)[0]
    beta_secret = await kam.issue_key(admin, "beta")
    beta_key = beta_secret.split("_", 1)[1].split(".", 1)[0]

    # Beta's user reaches none of acme's keys: 404, byte for byte the answer for a missing client.
    for method, path, missing in (
        ("POST", "/api/clients/acme/keys", "/api/clients/nobody/keys"),
        ("DELETE", f"/api/clients/acme/keys/{key_id}", f"/api/clients/nobody/keys/{key_id}"),
    ):
        refused = await kam.call(method, path, token=beta, json={} if method == "POST" else None)
        nothing = await kam.call(method, missing, token=beta, json={} if method == "POST" else None)
        assert refused.status == nothing.status == 404, refused.text
        assert refused.text.replace("acme", "nobody") == nothing.text
    # Acme's user cannot revoke beta's key by naming it under acme.
    assert (await kam.call("DELETE", f"/api/clients/acme/keys/{beta_key}", token=acme)).status == 404
    assert (await kam.call("GET", "/v1/whoami", key=beta_secret)).status == 200

    revoked = await kam.call("DELETE", f"/api/clients/acme/keys/{key_id}", token=acme)
    assert revoked.status == 200 and revoked.body["revoked"] is True, revoked.text
    assert (await kam.call("GET", "/v1/whoami", key=secret)).status == 401


async def test_an_api_key_issues_and_revokes_no_keys(kam: Kam) -> None:
    admin = await kam.admin()
    await kam.client_with_user(admin, "acme")
    full = await kam.issue_key(admin, "acme")
    other = await kam.issue_key(admin, "acme")
    other_id = other.split("_", 1)[1].split(".", 1)[0]
    # A key made by `nexus keys create` without scopes passes every client scope: still refused.
    unscoped = await issue_key(kam.service.log, "client", "acme")
    before = await kam.call("GET", "/api/clients/acme/keys", token=admin)
    for key in (full, unscoped.secret):
        minted = await kam.call("POST", "/api/clients/acme/keys", key=key, json={})
        assert minted.status == 403 and "API key cannot issue" in minted.body["message"], minted.text
        revoke = await kam.call("DELETE", f"/api/clients/acme/keys/{other_id}", key=key)
        assert revoke.status == 403, revoke.text
    after = await kam.call("GET", "/api/clients/acme/keys", token=admin)
    assert after.body == before.body
    assert not any(k["revoked"] for k in after.body["keys"])
    # A session that was closed is no credential at all.
    _, session = await kam.client_with_user(admin, "globex")
    assert (await kam.call("POST", "/api/auth/logout", token=session)).status == 200
    assert (await kam.call("POST", "/api/clients/globex/keys", token=session, json={})).status == 401
