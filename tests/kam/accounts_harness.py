"""KAM in the test's process, with helpers for its accounts: clients, users, logins, keys.

Shared by the accounts, sessions and audit tests: KAM is built by its bootstrap on in-memory
adapters (``inprocess.build``) and served on port 0; every call goes over real HTTP.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from inprocess import KAM_ADMIN, build

from nexus.eventlog.memory import MemoryEventLog
from nexus.runtime import Service
from nexus.services.kam.context import KamContext
from nexus.services.kam.sessions import SESSIONS, Sessions

PASSWORD = "a long enough passphrase"


class KeptLog(MemoryEventLog):
    """An in-memory log that outlives the service's stop, so a test can read what it wrote last."""

    async def close(self) -> None:
        return None


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    body: Any
    headers: Any
    text: str


@dataclass
class Kam:
    """A running KAM and an HTTP session to call it with (no cookie jar: credentials are explicit)."""

    service: Service
    url: str
    http: aiohttp.ClientSession
    log: MemoryEventLog

    @property
    def sessions(self) -> Sessions:
        return self.service.app[SESSIONS]

    @property
    def ctx(self) -> KamContext:
        return self.sessions.ctx

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        key: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if token is not None:
            sent["X-Session-Token"] = token
        if key is not None:
            sent["X-API-Key"] = key
        async with self.http.request(method, self.url + path, json=json, headers=sent) as response:
            text = await response.text()
            body = await response.json() if response.content_type == "application/json" else None
            return Answer(response.status, body, response.headers, text)

    async def login(self, username: str, password: str, login_type: str = "client") -> Answer:
        body = {"username": username, "password": password, "loginType": login_type}
        return await self.call("POST", "/api/auth/login", json=body)

    async def admin(self) -> str:
        """A session token of the bootstrap admin."""
        answer = await self.login(KAM_ADMIN[0], KAM_ADMIN[1], "admin")
        assert answer.status == 200, answer.text
        return str(answer.body["sessionToken"])

    async def client_with_user(
        self, admin: str, client_id: str, username: str | None = None, password: str = PASSWORD
    ) -> tuple[dict[str, Any], str]:
        """Create client ``client_id`` and a user of it; answers (the user, a session token of it)."""
        created = await self.call("POST", "/api/clients", token=admin, json={"client_id": client_id, "name": client_id})
        assert created.status == 201, created.text
        username = username or f"{client_id}-user@example.com"
        body = {"username": username, "password": password, "display_name": client_id.title()}
        user = await self.call("POST", f"/api/clients/{client_id}/users", token=admin, json=body)
        assert user.status == 201, user.text
        login = await self.login(username, password)
        assert login.status == 200, login.text
        return user.body, str(login.body["sessionToken"])

    async def issue_key(self, admin: str, client_id: str, scopes: list[str] | None = None) -> str:
        body = {} if scopes is None else {"scopes": scopes}
        answer = await self.call("POST", f"/api/clients/{client_id}/keys", token=admin, json=body)
        assert answer.status == 201, answer.text
        return str(answer.body["secret"])


@asynccontextmanager
async def running_kam(
    tmp_path: Path, service_hook: Any = None, log: MemoryEventLog | None = None, **env: str
) -> AsyncIterator[Kam]:
    """KAM started on a KeptLog (or ``log``: replicas share one); ``service_hook(service)`` may
    declare more routes before the start."""
    log = log if log is not None else KeptLog()
    env = {"NEXUS_KAM_AUDIT_FLUSH_SECONDS": "0.02", **env}
    service = await build("kam", tmp_path / secrets.token_hex(4), log=log, **env)
    if service_hook is not None:
        service_hook(service)
    await service.start()
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield Kam(service=service, url=f"http://127.0.0.1:{service.port}", http=http, log=log)
    finally:
        await service.stop()
