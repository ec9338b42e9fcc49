"""Studio's blob listing: each client sees only its own namespace; traversal prefixes are 400."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from nexus.auth import issue_key
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw import tenant_key
from nexus.raw.file import FileRaw
from nexus.runtime import Service
from nexus.services.studio.bootstrap import bootstrap
from nexus.services.studio.settings import load_settings


@pytest.fixture
async def studio(nats_server: str, tmp_path: Path) -> AsyncIterator[tuple[Service, MemoryEventLog, FileRaw]]:
    env = {"NEXUS_NATS_URL": nats_server, "NEXUS_DATA_DIR": str(tmp_path / "data")}
    settings = dataclasses.replace(load_settings(env), port=0)
    log = MemoryEventLog()
    # The file backend, as `nexus up` runs it, beside files that must never be listed.
    (tmp_path / "data").mkdir()
    (tmp_path / "data/events.db").write_text("the event log")
    raw = FileRaw(tmp_path / "data/raw", fsync=False)
    service = await bootstrap(settings, log=log, raw=raw)
    await service.start()
    try:
        yield service, log, raw
    finally:
        await service.stop()


async def test_a_client_lists_only_its_own_keys(studio: tuple[Service, MemoryEventLog, FileRaw]) -> None:
    service, log, raw = studio
    acme = await issue_key(log, "client", "acme")
    bob = await issue_key(log, "client", "bob")
    admin = await issue_key(log, "client", "ops", scopes=("admin",))
    await raw.store(tenant_key("acme", "uploads/a.json"), b"{}")
    await raw.store(tenant_key("acme", "uploads/b.json"), b"{}")
    await raw.store(tenant_key("bob", "uploads/secret.json"), b"{}")
    await raw.store("granulator/e1/h1.json", b"{}")
    base = f"http://127.0.0.1:{service.port}/v1/blobs"

    async with aiohttp.ClientSession() as http:
        async with http.get(base, headers={"X-API-Key": acme.secret}) as r:
            assert r.status == 200
            assert (await r.json())["keys"] == ["uploads/a.json", "uploads/b.json"]
        async with http.get(base, headers={"X-API-Key": bob.secret}, params={"prefix": "uploads/"}) as r:
            assert (await r.json())["keys"] == ["uploads/secret.json"]
        # Bob cannot reach acme's namespace by naming it either.
        async with http.get(base, headers={"X-API-Key": bob.secret}, params={"prefix": "t/acme/"}) as r:
            assert (await r.json())["keys"] == []
        # An admin key sees every key, in full.
        async with http.get(base, headers={"X-API-Key": admin.secret}) as r:
            assert (await r.json())["keys"] == [
                "granulator/e1/h1.json",
                "t/acme/uploads/a.json",
                "t/acme/uploads/b.json",
                "t/bob/uploads/secret.json",
            ]


async def test_pages_stay_in_the_namespace(studio: tuple[Service, MemoryEventLog, FileRaw]) -> None:
    service, log, raw = studio
    acme = await issue_key(log, "client", "acme")
    for i in range(1001):
        await raw.store(tenant_key("acme", f"k{i:04d}"), b"")
    await raw.store(tenant_key("zed", "after"), b"")
    base = f"http://127.0.0.1:{service.port}/v1/blobs"
    async with aiohttp.ClientSession() as http:
        async with http.get(base, headers={"X-API-Key": acme.secret}) as r:
            first = await r.json()
        assert len(first["keys"]) == 1000 and first["next_cursor"] == "k0999"
        async with http.get(base, headers={"X-API-Key": acme.secret}, params={"cursor": first["next_cursor"]}) as r:
            second = await r.json()
        assert second == {"keys": ["k1000"], "next_cursor": None}


@pytest.mark.parametrize("prefix", ["../", "../../../etc/", "/etc", "a/../../", "..\\x", "a\x01"])
async def test_traversal_prefixes_are_400(studio: tuple[Service, MemoryEventLog, FileRaw], prefix: str) -> None:
    service, log, _ = studio
    admin = await issue_key(log, "client", "ops", scopes=("admin",))
    base = f"http://127.0.0.1:{service.port}/v1/blobs"
    async with aiohttp.ClientSession() as http:
        # Even an admin key, whose listing starts at the store's root, cannot leave it.
        async with http.get(base, headers={"X-API-Key": admin.secret}, params={"prefix": prefix}) as r:
            body = await r.json()
            assert r.status == 400, body
            assert body["error"] == "invalid_query" and "prefix" in body["message"]
        async with http.get(base, headers={"X-API-Key": admin.secret}, params={"cursor": "../x"}) as r:
            assert r.status == 400
