"""KAM's logins and sessions: the seed's answer, failures alike, limits, cookies, headers, expiry,
logout, password changes, and rehashing at login."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import argon2
import msgspec
import pytest
from accounts_harness import PASSWORD, Kam, KeptLog, running_kam
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from inprocess import KAM_ADMIN

import nexus.services.kam.accounts as accounts
from nexus.proto import new_event
from nexus.proto.events.kam import KamSessionClosed, KamSessionOpened, KamUserPasswordChanged
from nexus.services.kam.context import CLIENT_SCOPES
from nexus.services.kam.state import ACCOUNTS_STREAM, PASSWORD_CHANGED, SESSIONS_STREAM

TOKEN = re.compile(r"sess_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}")


@pytest.fixture
async def kam(tmp_path: Path) -> AsyncIterator[Kam]:
    async with running_kam(tmp_path, NEXUS_LOGIN_FAILURES_PER_USER="50", NEXUS_LOGIN_FAILURES_PER_ADDRESS="200") as kam:
        yield kam


async def test_login_answers_the_seeds_shape_and_sets_a_strict_cookie(kam: Kam) -> None:
    admin = await kam.admin()
    user, _ = await kam.client_with_user(admin, "acme", "Ana@Acme.example")
    # Login names are case-insensitive.
    answer = await kam.login("ana@acme.example", PASSWORD)
    assert answer.status == 200, answer.text
    body = answer.body
    assert body["success"] is True and TOKEN.fullmatch(body["sessionToken"])
    assert body["user"] == {
        "id": user["id"],
        "username": "Ana@Acme.example",
        "role": "client",
        "client_id": "acme",
        "display_name": "Acme",
    }
    assert body["kamContext"] == {"role": "client", "client_id": "acme", "permissions": list(CLIENT_SCOPES)}
    assert body["expiresAt"].endswith("Z")
    # The console's cookie: the same token, HttpOnly, SameSite=Strict, Path=/, a day; not Secure over http.
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"nexus_session={body['sessionToken']};")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes and "secure" not in attributes
    assert "SameSite=Strict" in cookie and "Path=/" in cookie and "Max-Age=86400" in cookie
    # The log keeps the token's sha256, never the token.
    opened = [e for e in await kam.log.read_stream(SESSIONS_STREAM) if e.type.endswith("session.opened")]
    stored = msgspec.convert(opened[-1].data, KamSessionOpened)
    assert body["sessionToken"] not in str([e.data for e in opened])
    assert len(stored.hash) == 64 and stored.user_id == user["id"]
    # The bootstrap admin logs in with loginType admin.
    answer = await kam.login(KAM_ADMIN[0], KAM_ADMIN[1], "admin")
    assert answer.body["user"]["role"] == "admin" and answer.body["user"]["id"] == "admin"
    assert answer.body["kamContext"] == {"role": "admin", "client_id": None, "permissions": ["admin"]}


async def test_every_failure_is_the_same_401(kam: Kam) -> None:
    admin = await kam.admin()
    await kam.client_with_user(admin, "acme", "ana@acme.example")
    failures = [
        await kam.login("ana@acme.example", "wrong password!"),  # wrong password
        await kam.login("nobody@acme.example", PASSWORD),  # unknown user
        await kam.login("ana@acme.example", PASSWORD, "admin"),  # a client user as an admin
        await kam.login(KAM_ADMIN[0], KAM_ADMIN[1], "client"),  # the admin as a client user
    ]
    assert [(a.status, a.body) for a in failures] == [
        (401, {"error": "unauthorized", "message": "unknown user or wrong password"})
    ] * 4
    # A login type that is neither, and an unknown field, are the caller's mistakes: 400 naming them.
    odd = await kam.login("ana@acme.example", PASSWORD, "root")
    assert odd.status == 400 and "loginType" in odd.body["message"]
    extra = await kam.call(
        "POST", "/api/auth/login", json={"username": "a", "password": "b", "loginType": "client", "role": "admin"}
    )
    assert extra.status == 400 and "role" in extra.body["message"]


async def test_an_unknown_user_costs_the_same_argon2_check_as_a_wrong_password(
    kam: Kam, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await kam.admin()
    await kam.client_with_user(admin, "acme", "ana@acme.example")
    checked: list[str] = []
    real = accounts.verify_password

    def recording_verify(password_hash: str, password: str) -> bool:
        checked.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(accounts, "verify_password", recording_verify)

    async def timed(username: str) -> float:
        started = time.perf_counter()
        answer = await kam.login(username, "wrong password!")
        assert answer.status == 401
        return time.perf_counter() - started

    # Interleaved, so a slower moment of the machine hits both alike.
    unknown, wrong = [], []
    for _ in range(6):
        unknown.append(await timed("nobody@acme.example"))
        wrong.append(await timed("ana@acme.example"))
    # Every attempt ran one real Argon2id verification with the same parameters…
    assert len(checked) == 12
    parameters = [argon2.extract_parameters(h) for h in checked]
    assert all(p == parameters[0] for p in parameters) and parameters[0].type is argon2.Type.ID
    # …so the medians are close (Argon2 dominates: tens of milliseconds).
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2.0, (unknown, wrong)


async def test_failed_logins_are_limited_per_user_and_address(tmp_path: Path) -> None:
    async with running_kam(tmp_path, NEXUS_LOGIN_FAILURES_PER_USER="3", NEXUS_LOGIN_FAILURES_PER_ADDRESS="100") as kam:
        admin = await kam.admin()
        await kam.client_with_user(admin, "acme", "ana@acme.example")
        for _ in range(3):
            assert (await kam.login("ana@acme.example", "wrong password!")).status == 401
        # Limited now, even with the right password (no oracle while limited).
        for password in ("wrong password!", PASSWORD):
            limited = await kam.login("ANA@acme.example", password)
            assert limited.status == 429 and limited.body["error"] == "too_many_requests"
            assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # Another user from the same address is not limited by ana's failures.
        assert (await kam.login(KAM_ADMIN[0], KAM_ADMIN[1], "admin")).status == 200


async def test_a_session_is_accepted_from_each_header_and_the_cookie(kam: Kam) -> None:
    admin = await kam.admin()
    _, token = await kam.client_with_user(admin, "acme")
    for headers in (
        {"x-bitware-session-token": token},
        {"X-Session-Token": token},
        {"Cookie": f"nexus_session={token}"},
    ):
        for prefix in ("/api", "/api/kam"):
            answer = await kam.call("GET", f"{prefix}/auth/session", headers=headers)
            assert answer.status == 200, (headers, answer.text)
            assert answer.body["authenticated"] == "session" and answer.body["user"]["client_id"] == "acme"
    # No credential at all: 401 naming both kinds.
    bare = await kam.call("GET", "/api/auth/session")
    assert bare.status == 401 and "session" in bare.body["message"]


async def test_malformed_unknown_and_forged_tokens_are_refused(kam: Kam) -> None:
    admin = await kam.admin()
    _, token = await kam.client_with_user(admin, "acme")
    malformed = await kam.call("GET", "/api/auth/session", token="sess_nonsense")
    assert malformed.status == 401 and "malformed" in malformed.body["message"]
    unknown = await kam.call("GET", "/api/auth/session", token="sess_0123456789abcdef." + "A" * 43)
    assert unknown.status == 401 and "not known" in unknown.body["message"]
    # The right session id with another secret.
    forged = token.split(".")[0] + "." + "B" * 43
    answer = await kam.call("GET", "/api/auth/session", token=forged)
    assert answer.status == 401 and "not known" in answer.body["message"]


async def test_a_session_expires(kam: Kam) -> None:
    admin = await kam.admin()
    _, token = await kam.client_with_user(admin, "acme")
    assert (await kam.call("GET", "/api/auth/session", token=token)).status == 200
    now = time.time()
    kam.sessions.clock = lambda: now + 86400 + 1
    expired = await kam.call("GET", "/api/auth/session", token=token)
    assert expired.status == 401 and "expired" in expired.body["message"]


async def test_a_tiny_ttl_from_the_environment(tmp_path: Path) -> None:
    async with running_kam(tmp_path, NEXUS_KAM_SESSION_TTL_SECONDS="0.5") as kam:
        login = await kam.login(KAM_ADMIN[0], KAM_ADMIN[1], "admin")
        assert "Max-Age=1" in login.headers["Set-Cookie"]  # rounded up: never gone before the session
        token = login.body["sessionToken"]
        assert (await kam.call("GET", "/api/auth/session", token=token)).status == 200
        await asyncio.sleep(0.6)
        assert (await kam.call("GET", "/api/auth/session", token=token)).status == 401


async def test_logout_closes_the_session_and_clears_the_cookie(kam: Kam) -> None:
    admin = await kam.admin()
    _, token = await kam.client_with_user(admin, "acme")
    answer = await kam.call("POST", "/api/auth/logout", token=token)
    assert answer.status == 200 and answer.body == {"success": True}
    assert "nexus_session=" in answer.headers["Set-Cookie"] and "Max-Age=0" in answer.headers["Set-Cookie"]
    after = await kam.call("GET", "/api/auth/session", token=token)
    assert after.status == 401 and "logout" in after.body["message"]
    assert (await kam.call("POST", "/api/auth/logout", token=token)).status == 401
    # An API key has no session to close.
    key = await kam.issue_key(admin, "acme")
    with_key = await kam.call("POST", "/api/auth/logout", key=key)
    assert with_key.status == 400 and "session" in with_key.body["message"]


async def test_a_password_change_closes_every_session_of_the_user(kam: Kam) -> None:
    admin = await kam.admin()
    user, first = await kam.client_with_user(admin, "acme", "ana@acme.example")
    second = (await kam.login("ana@acme.example", PASSWORD)).body["sessionToken"]
    _, other_user = await kam.client_with_user(admin, "beta", "bob@beta.example")
    new = "an even longer passphrase"

    weak = await kam.call(
        "PUT", "/api/auth/password", token=first, json={"current_password": PASSWORD, "new_password": "short"}
    )
    assert weak.status == 400 and "12" in weak.body["message"]
    wrong = await kam.call(
        "PUT", "/api/auth/password", token=first, json={"current_password": "not it at all", "new_password": new}
    )
    assert wrong.status == 403
    changed = await kam.call(
        "PUT", "/api/auth/password", token=first, json={"current_password": PASSWORD, "new_password": new}
    )
    assert changed.status == 200, changed.text
    fresh = changed.body["sessionToken"]
    assert TOKEN.fullmatch(fresh) and changed.body["user"]["id"] == user["id"]
    assert "nexus_session=" in changed.headers["Set-Cookie"]
    # Both earlier sessions are refused; the fresh one and another user's are not.
    for token in (first, second):
        refused = await kam.call("GET", "/api/auth/session", token=token)
        assert refused.status == 401 and "password changed" in refused.body["message"]
    assert (await kam.call("GET", "/api/auth/session", token=fresh)).status == 200
    assert (await kam.call("GET", "/api/auth/session", token=other_user)).status == 200
    # The old password no longer logs in; the new one does.
    assert (await kam.login("ana@acme.example", PASSWORD)).status == 401
    assert (await kam.login("ana@acme.example", new)).status == 200
    # As events: the change, and each session closed for it.
    changes = [
        msgspec.convert(e.data, KamUserPasswordChanged)
        for e in await kam.log.read_stream(ACCOUNTS_STREAM)
        if e.type == PASSWORD_CHANGED
    ]
    assert [(c.user_id, c.reason) for c in changes] == [(user["id"], "changed")]
    closed = [
        msgspec.convert(e.data, KamSessionClosed)
        for e in await kam.log.read_stream(SESSIONS_STREAM)
        if e.type.endswith("session.closed")
    ]
    assert len(closed) == 2 and {c.reason for c in closed} == {"password_changed"}
    # The bootstrap admin's password is its setting's.
    admin_change = await kam.call(
        "PUT", "/api/auth/password", token=admin, json={"current_password": KAM_ADMIN[1], "new_password": new}
    )
    assert admin_change.status == 400 and "NEXUS_ADMIN_PASSWORD" in admin_change.body["message"]


async def test_a_hash_with_older_parameters_is_replaced_at_login(kam: Kam) -> None:
    admin = await kam.admin()
    user, _ = await kam.client_with_user(admin, "acme", "ana@acme.example")
    # The user's hash as an older release would have made it: weaker Argon2id parameters.
    old = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    data = KamUserPasswordChanged(user_id=user["id"], password_hash=old, reason="rehashed")
    await kam.ctx.append(ACCOUNTS_STREAM, [new_event(PASSWORD_CHANGED, data, source="test")])
    assert accounts.needs_rehash(old)

    assert (await kam.login("ana@acme.example", PASSWORD)).status == 200
    changes = [e for e in await kam.log.read_stream(ACCOUNTS_STREAM) if e.type == PASSWORD_CHANGED]
    rehashed = msgspec.convert(changes[-1].data, KamUserPasswordChanged)
    assert len(changes) == 2 and rehashed.reason == "rehashed" and rehashed.password_hash != old
    assert not accounts.needs_rehash(rehashed.password_hash)
    assert argon2.PasswordHasher().verify(rehashed.password_hash, PASSWORD)
    # Sessions opened before a rehash stay valid (the password did not change), and the next login
    # finds nothing to upgrade.
    assert (await kam.login("ana@acme.example", PASSWORD)).status == 200
    assert len([e for e in await kam.log.read_stream(ACCOUNTS_STREAM) if e.type == PASSWORD_CHANGED]) == 2


async def test_the_cookie_is_secure_when_the_login_came_over_https(kam: Kam) -> None:
    # KAM behind TLS (or an https-terminating proxy aiohttp trusts): the request's scheme is https.
    request = make_mocked_request("POST", "/api/auth/login").clone(scheme="https")
    response = web.Response()
    kam.sessions.set_cookie(request, response, "sess_0123456789abcdef." + "A" * 43, "csrf")
    plain = web.Response()
    kam.sessions.set_cookie(make_mocked_request("POST", "/api/auth/login"), plain, "x", "y")
    assert "Secure" not in plain.cookies["nexus_session"].OutputString()
    cookie = response.cookies["nexus_session"].OutputString()
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # The CSRF cookie: the page reads it (no HttpOnly), other sites never get it sent.
    csrf = response.cookies["nexus_csrf"].OutputString()
    assert "Secure" in csrf and "HttpOnly" not in csrf and "SameSite=Strict" in csrf


async def test_the_admin_session_says_who_it_is(kam: Kam) -> None:
    login = await kam.call(
        "POST", "/api/kam/auth/login", json={"username": KAM_ADMIN[0], "password": KAM_ADMIN[1], "loginType": "admin"}
    )
    assert login.status == 200, login.text
    who = await kam.call("GET", "/api/auth/session", token=login.body["sessionToken"])
    assert who.body["authenticated"] == "session" and who.body["expiresAt"] == login.body["expiresAt"]
    assert who.body["user"] == {
        "id": "admin",
        "username": KAM_ADMIN[0],
        "role": "admin",
        "client_id": None,
        "display_name": "Administrator",
    }
    assert who.body["kamContext"] == {"role": "admin", "client_id": None, "permissions": ["admin"]}


async def test_a_session_opened_on_one_replica_is_accepted_and_closed_on_every_replica(tmp_path: Path) -> None:
    log = KeptLog()
    async with running_kam(tmp_path, log=log) as first, running_kam(tmp_path, log=log) as second:
        admin = await first.admin()
        _, token = await first.client_with_user(admin, "acme")
        # At once on the other replica: it folds the log up to its head before calling a session unknown.
        assert (await second.call("GET", "/api/auth/session", token=token)).status == 200
        assert (await first.call("POST", "/api/auth/logout", token=token)).status == 200
        for _ in range(100):  # the other replica follows the log (milliseconds)
            refused = await second.call("GET", "/api/auth/session", token=token)
            if refused.status == 401:
                break
            await asyncio.sleep(0.02)
        assert refused.status == 401 and "logout" in refused.body["message"]
