"""Keys and tokens travel as events; passwords are Argon2id; the guards answer 401/403."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import nexus.auth._keys as keys_module
from nexus.auth import (
    AUTH,
    KEY_ISSUED,
    KEYS_STREAM,
    WORKER_ID,
    KeyView,
    UnknownKeyError,
    ensure_admin,
    hash_password,
    issue_key,
    load_admin,
    require_api_key,
    require_worker,
    revoke_key,
    verify_password,
)
from nexus.eventlog.memory import MemoryEventLog


async def test_a_key_issued_by_one_process_is_checked_and_revoked_in_another_view(memory_log: MemoryEventLog) -> None:
    # Two services, each with its own view of the same log.
    kam_view, studio_view = KeyView(memory_log), KeyView(memory_log)
    issued = await issue_key(memory_log, "client", "acme")

    info = await studio_view.verify(issued.secret)
    assert info is not None and (info.owner, info.kind) == ("acme", "client")
    assert (await kam_view.verify(issued.secret)) == info

    # Only the hash is in the log, never the secret.
    [event] = await memory_log.read_stream(KEYS_STREAM)
    assert event.type == KEY_ISSUED
    assert issued.secret not in str(event.data)
    assert event.data["hash"] == keys_module.hash_secret(issued.secret)

    await revoke_key(memory_log, issued.info.key_id, reason="leaked")
    assert await studio_view.verify(issued.secret) is None
    assert await kam_view.verify(issued.secret) is None
    # Revoking twice records one revocation.
    await revoke_key(memory_log, issued.info.key_id)
    assert len(await memory_log.read_stream(KEYS_STREAM)) == 2


async def test_wrong_tampered_and_unknown_secrets_are_refused(memory_log: MemoryEventLog) -> None:
    issued = await issue_key(memory_log, "worker", "granulator-1")
    view = KeyView(memory_log)
    await view.refresh()
    assert view.check(issued.secret) is not None
    assert view.check(issued.secret[:-1] + ("A" if issued.secret[-1] != "A" else "B")) is None
    assert view.check("") is None
    assert view.check("not-a-key") is None
    # A worker token relabelled as a client key has another hash and is refused.
    assert view.check(issued.secret.replace("nxw_", "nxk_", 1)) is None
    with pytest.raises(UnknownKeyError):
        await revoke_key(memory_log, "0000000000000000")
    with pytest.raises(ValueError, match="kind"):
        await issue_key(memory_log, "admin", "x")


async def test_the_check_compares_hashes_in_constant_time_even_for_unknown_keys(
    memory_log: MemoryEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = keys_module.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", recording)
    issued = await issue_key(memory_log, "client", "acme")
    view = KeyView(memory_log)
    await view.refresh()
    assert view.check(issued.secret) is not None
    assert view.check("nxk_ffffffffffffffff.guess") is None
    assert view.check("garbage") is None
    # Every check, known key or not, went through hmac.compare_digest on 64-hex digests.
    assert len(calls) == 3
    assert all(len(a) == len(b) == 64 for a, b in calls)


def test_passwords_are_hashed_with_argon2id() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert verify_password(hashed, "correct horse")
    assert not verify_password(hashed, "wrong")
    assert not verify_password("not-a-hash", "correct horse")


async def test_the_admin_password_is_generated_once_and_only_its_hash_recorded(memory_log: MemoryEventLog) -> None:
    shown: list[str] = []
    event = await ensure_admin(memory_log, "admin", None, announce=shown.append)
    assert event is not None and len(shown) == 1
    password = shown[0].split("password: ", 1)[1].split()[0]
    assert password not in str(event.data)
    admin = await load_admin(memory_log)
    assert admin is not None and verify_password(admin.password_hash, password)

    # A restart without NEXUS_ADMIN_PASSWORD keeps it and prints nothing.
    assert await ensure_admin(memory_log, "admin", None, announce=shown.append) is None
    assert len(shown) == 1
    # Setting NEXUS_ADMIN_PASSWORD records the new hash.
    assert await ensure_admin(memory_log, "admin", "s3cret-pass", announce=shown.append) is not None
    admin = await load_admin(memory_log)
    assert admin is not None and verify_password(admin.password_hash, "s3cret-pass")
    assert await ensure_admin(memory_log, "admin", "s3cret-pass", announce=shown.append) is None


async def test_the_guards_answer_401_for_bad_credentials_and_403_for_the_wrong_kind(memory_log: MemoryEventLog) -> None:
    view = KeyView(memory_log)
    client_key = await issue_key(memory_log, "client", "acme")
    worker_token = await issue_key(memory_log, "worker", "w1")

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"owner": request[AUTH].owner, "worker": request.get(WORKER_ID)})

    app = web.Application()
    app.router.add_get("/client", require_api_key(view)(whoami))
    app.router.add_get("/worker", require_worker(view)(whoami))
    async with TestClient(TestServer(app)) as http:
        ok = await http.get("/client", headers={"x-service-key": client_key.secret})
        assert ok.status == 200 and (await ok.json())["owner"] == "acme"
        assert (await http.get("/client", headers={"X-API-Key": client_key.secret})).status == 200
        assert (await http.get("/client")).status == 401
        assert (await http.get("/client", headers={"X-API-Key": worker_token.secret})).status == 403

        bearer = {"Authorization": f"Bearer {worker_token.secret}", "X-Worker-ID": "w1"}
        ok = await http.get("/worker", headers=bearer)
        assert ok.status == 200 and (await ok.json()) == {"owner": "w1", "worker": "w1"}
        # The worker is its token: X-Worker-ID may be left out, and another worker's name is refused.
        alone = await http.get("/worker", headers={"Authorization": f"Bearer {worker_token.secret}"})
        assert alone.status == 200 and (await alone.json())["worker"] == "w1"
        posing = await http.get("/worker", headers={**bearer, "X-Worker-ID": "w2"})
        assert posing.status == 403 and (await posing.json())["error"] == "worker_mismatch"
        client_as_worker = {"Authorization": f"Bearer {client_key.secret}", "X-Worker-ID": "w1-a"}
        assert (await http.get("/worker", headers=client_as_worker)).status == 403
        wrong = {"Authorization": "Bearer nxw_0000000000000000.nope", "X-Worker-ID": "w1-a"}
        refused = await http.get("/worker", headers=wrong)
        assert refused.status == 401 and "Bearer" in refused.headers["WWW-Authenticate"]

        await revoke_key(memory_log, worker_token.info.key_id)
        assert (await http.get("/worker", headers=bearer)).status == 401


def test_keys_command_prints_the_secret_once_and_revokes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nexus.cli.main import main

    monkeypatch.setenv("NEXUS_EVENT_LOG_URL", f"sqlite:///{tmp_path / 'events.db'}")
    assert main(["keys", "create", "--worker", "granulator-1"]) == 0
    out = capsys.readouterr().out
    secret = next(line for line in out.splitlines() if line.startswith("nxw_"))
    key_id = secret.split("_", 1)[1].split(".", 1)[0]
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", "0000000000000000"]) == 1
    assert out.count(secret) == 1
