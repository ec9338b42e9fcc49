"""KAM's clients, users and API keys: who may create and see them, and what a scoped key may do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from accounts_harness import PASSWORD, Kam, running_kam
from aiohttp import web
from inprocess import KAM_ADMIN

from nexus.auth import KeyView, issue_key, revoke_key
from nexus.runtime import Service, json_response
from nexus.services.kam.context import CLIENT_SCOPES

WRITE_ROUTE = "/api/test/requests-write"


def declare_write_route(service: Service) -> None:
    """A route needing ``requests:write``, as KAM's request routes declare it."""

    async def write(request: web.Request) -> web.Response:
        return json_response({"ok": True})

    service.route("POST", WRITE_ROUTE, summary="test", auth="client", scope="requests:write")(write)


@pytest.fixture
async def kam(tmp_path: Path) -> AsyncIterator[Kam]:
    async with running_kam(tmp_path, service_hook=declare_write_route) as kam:
        yield kam


async def test_admins_create_clients_and_clients_see_only_their_own(kam: Kam) -> None:
    admin = await kam.admin()
    body = {
        "client_id": "acme",
        "name": "Acme Corp",
        "contact_email": "ops@acme.example",
        "tier": "premium",
        "monthly_budget": 2500.0,
        "currency": "EUR",
    }
    created = await kam.call("POST", "/api/clients", token=admin, json=body)
    assert created.status == 201, created.text
    assert {k: created.body[k] for k in body} == body and created.body["created_by"] == "user:admin"
    assert (await kam.call("POST", "/api/clients", token=admin, json=body)).status == 409
    # Bad input: 400 naming what is wrong.
    for bad, word in (
        ({"client_id": "platform", "name": "x"}, "client_id"),
        ({"client_id": "has space", "name": "x"}, "client_id"),
        ({"client_id": "ok", "name": "x", "tier": "gold"}, "tier"),
        ({"client_id": "ok", "name": "x", "currency": "euro"}, "currency"),
        ({"client_id": "ok", "name": "x", "monthly_budget": -1}, "monthly_budget"),
        ({"client_id": "ok", "name": "x", "owner": "me"}, "owner"),
    ):
        answer = await kam.call("POST", "/api/clients", token=admin, json=bad)
        assert answer.status == 400 and word in answer.body["message"], answer.text
    _, beta = await kam.client_with_user(admin, "beta")
    # A client's user: creating a client is an admin's (403); it lists and reads only its own.
    assert (await kam.call("POST", "/api/clients", token=beta, json={"client_id": "x", "name": "x"})).status == 403
    listed = await kam.call("GET", "/api/clients", token=beta)
    assert [c["client_id"] for c in listed.body["clients"]] == ["beta"]
    assert (await kam.call("GET", "/api/clients/beta", token=beta)).status == 200
    hidden = await kam.call("GET", "/api/clients/acme", token=beta)
    missing = await kam.call("GET", "/api/clients/nobody", token=beta)
    assert hidden.status == missing.status == 404 and "acme" not in str(missing.body)
    everyone = await kam.call("GET", "/api/kam/clients", token=admin)
    assert [c["client_id"] for c in everyone.body["clients"]] == ["acme", "beta"]


async def test_users_are_created_by_admins_with_unique_names_and_strong_passwords(kam: Kam) -> None:
    admin = await kam.admin()
    user, acme = await kam.client_with_user(admin, "acme", "ana@acme.example")
    assert user["role"] == "client" and user["client_id"] == "acme" and user["id"].startswith("usr_")
    await kam.client_with_user(admin, "beta", "bob@beta.example")
    # Taken names, whatever their case, and the bootstrap admin's: 409.
    for name in ("ANA@acme.example", KAM_ADMIN[0].upper()):
        taken = await kam.call(
            "POST", "/api/clients/acme/users", token=admin, json={"username": name, "password": PASSWORD}
        )
        assert taken.status == 409, taken.text
    weak = await kam.call("POST", "/api/clients/acme/users", token=admin, json={"username": "x@y", "password": "short"})
    assert weak.status == 400 and "weak" in weak.body["message"]
    unknown_client = await kam.call(
        "POST", "/api/clients/nobody/users", token=admin, json={"username": "n@y", "password": PASSWORD}
    )
    assert unknown_client.status == 404
    # A client's user creates no users (403), sees its own client's users and no password hash…
    assert (
        await kam.call("POST", "/api/clients/acme/users", token=acme, json={"username": "e@y", "password": PASSWORD})
    ).status == 403
    users = await kam.call("GET", "/api/clients/acme/users", token=acme)
    assert users.status == 200 and [u["username"] for u in users.body["users"]] == ["ana@acme.example"]
    assert "hash" not in users.text and "argon2" not in users.text
    # …and not another client's (404, as for none).
    assert (await kam.call("GET", "/api/clients/beta/users", token=acme)).status == 404


async def test_keys_are_issued_with_scopes_and_a_missing_scope_is_403(kam: Kam) -> None:
    admin = await kam.admin()
    _, acme = await kam.client_with_user(admin, "acme")
    reader = await kam.call(
        "POST", "/api/clients/acme/keys", token=admin, json={"scopes": ["requests:read"], "name": "dashboard"}
    )
    assert reader.status == 201, reader.text
    assert reader.body["scopes"] == ["requests:read"] and reader.body["secret"].startswith("nxk_")
    full = await kam.issue_key(admin, "acme")
    # The keys work as any API key (every service's KeyView accepts them)…
    whoami = await kam.call("GET", "/v1/whoami", key=reader.body["secret"])
    assert whoami.body == {
        "key_id": reader.body["key_id"],
        "kind": "client",
        "owner": "acme",
        "scopes": ["requests:read"],
    }
    who = await kam.call("GET", "/api/auth/session", key=full)
    assert who.body["authenticated"] == "key"
    assert who.body["kamContext"] == {"role": "client", "client_id": "acme", "permissions": list(CLIENT_SCOPES)}
    # …a scope the key lacks is 403; the key with every client scope and a session pass.
    refused = await kam.call("POST", WRITE_ROUTE, key=reader.body["secret"])
    assert refused.status == 403 and "requests:write" in refused.body["message"]
    assert (await kam.call("POST", WRITE_ROUTE, key=full)).status == 200
    assert (await kam.call("POST", WRITE_ROUTE, token=acme)).status == 200
    # Scopes are a subset of the client scopes, never empty.
    for scopes, word in ((["admin"], "admin"), (["requests:delete"], "requests:delete"), ([], "empty")):
        bad = await kam.call("POST", "/api/clients/acme/keys", token=admin, json={"scopes": scopes})
        assert bad.status == 400 and word in bad.body["message"], bad.text
    # An API key issues none, even one holding every client scope (tests/kam/test_kam_client_keys.py).
    assert (await kam.call("POST", "/api/clients/acme/keys", key=full, json={})).status == 403


async def test_keys_are_listed_without_secrets_and_revoked_by_admins(kam: Kam) -> None:
    admin = await kam.admin()
    _, acme = await kam.client_with_user(admin, "acme")
    await kam.client_with_user(admin, "beta")
    secret = await kam.issue_key(admin, "acme", ["requests:read"])
    key_id = secret.split("_", 1)[1].split(".", 1)[0]
    beta_secret = await kam.issue_key(admin, "beta")
    beta_key = beta_secret.split("_", 1)[1].split(".", 1)[0]
    # A key made with `nexus keys create` (no scopes) is listed too.
    cli_key = await issue_key(kam.service.log, "client", "acme")

    listed = await kam.call("GET", "/api/clients/acme/keys", token=acme)
    assert listed.status == 200
    assert [(k["key_id"], k["scopes"], k["revoked"]) for k in listed.body["keys"]] == [
        (key_id, ["requests:read"], False),
        (cli_key.info.key_id, [], False),
    ]
    assert listed.body["keys"][0]["issued_by"] == "user:admin"
    assert secret not in listed.text and cli_key.secret not in listed.text and beta_key not in listed.text
    assert (await kam.call("GET", "/api/clients/beta/keys", token=acme)).status == 404
    # An API key revokes nothing (403); beta's key named under acme is 404, as a key that does not exist.
    assert (await kam.call("DELETE", f"/api/clients/acme/keys/{key_id}", key=secret)).status == 403
    assert (await kam.call("DELETE", f"/api/clients/acme/keys/{beta_key}", token=admin)).status == 404
    assert (await kam.call("DELETE", "/api/clients/acme/keys/0000000000000000", token=admin)).status == 404
    revoked = await kam.call("DELETE", f"/api/clients/acme/keys/{key_id}", token=admin)
    assert revoked.status == 200 and revoked.body["revoked"] is True and revoked.body["revoked_at"]
    # Refused from then on, here and by any service reading the log's keys (what `nexus keys` revokes).
    assert (await kam.call("GET", "/v1/whoami", key=secret)).status == 401
    assert await KeyView(kam.service.log).verify(secret) is None
    assert (await kam.call("GET", "/v1/whoami", key=beta_secret)).status == 200
    # What `nexus keys revoke` does (nexus.auth.revoke_key) shows in KAM's listing as well.
    await revoke_key(kam.service.log, cli_key.info.key_id)
    after = await kam.call("GET", "/api/clients/acme/keys", token=admin)
    assert [k["revoked"] for k in after.body["keys"]] == [True, True]
