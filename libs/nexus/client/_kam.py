"""The KAM client: an AI-factory client's and an admin's whole flow, from login to deliverable.

::

    async with KamClient("http://127.0.0.1:8081") as admin:
        await admin.login("admin", admin_password, login_type="admin")
        await admin.create_client("acme", name="Acme Corp")
        await admin.create_user("acme", "ana@acme.example", password)

    async with KamClient(url) as ana:
        await ana.login("ana@acme.example", password)
        request = await ana.create_request("Market analysis", "Need a report on …", urgency="high")

Every method answers the decoded JSON body, or raises ``KamApiError`` with the HTTP status
(0 when KAM could not be reached) and the decoded error body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Self

import aiohttp

from nexus.client._sse import parse_sse

__all__ = ["KamApiError", "KamClient"]

SESSION_HEADER = "X-Session-Token"


class KamApiError(Exception):
    """KAM answered with an error, or could not be reached.

    Attributes:
        status: HTTP status (0 when no answer came; the cause is the connection error).
        body: The decoded error body, when there was one.
    """

    def __init__(self, message: str, *, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _decode(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return {"message": text[:500]}


class KamClient:
    """A client of KAM's HTTP API (``/api/...``), with a login session or an API key.

    Args:
        base_url: KAM, e.g. ``http://127.0.0.1:8081``.
        session_token: A session token (``sess_…``) from an earlier login, sent as ``X-Session-Token``.
        api_key: A client API key, sent as ``X-API-Key`` (for programs; no login needed).
        session: An aiohttp session to reuse; one is created (and closed by ``close``) otherwise.
        timeout: Seconds per request (``notifications`` has no total bound).
    """

    def __init__(
        self,
        base_url: str,
        *,
        session_token: str | None = None,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session_token = session_token
        self._api_key = api_key
        self._session = session
        self._own_session = session is None
        self._timeout = timeout
        self.user: dict[str, Any] | None = None
        """The logged-in user (``login``'s answer), else None."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No cookie jar: the session travels in a header, so two clients never share one.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept}
        if self.session_token:
            headers[SESSION_HEADER] = self.session_token
        elif self._api_key:
            headers["X-API-Key"] = self._api_key
        return headers

    async def call(self, method: str, path: str, *, json_body: Any = None, query: dict[str, Any] | None = None) -> Any:
        """One request to ``/api{path}``; the decoded JSON answer.

        Raises:
            KamApiError: an answer of 400 or more (its status and body), or no answer.
        """
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        try:
            async with self._http().request(
                method,
                f"{self.base_url}/api{path}",
                json=json_body,
                params=params,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as response:
                text = await response.text()
                body = _decode(text)
                if response.status >= 400:
                    message = body.get("message") or body.get("error") if isinstance(body, dict) else text[:200]
                    raise KamApiError(
                        f"{method} /api{path}: {response.status} {message}", status=response.status, body=body
                    )
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KamApiError(f"cannot reach KAM at {self.base_url} ({exc})") from exc

    # -- accounts ------------------------------------------------------------------------------

    async def login(self, username: str, password: str, *, login_type: str = "client") -> dict[str, Any]:
        """Log in; the session token is kept and sent with every later call."""
        answer = await self.call(
            "POST", "/auth/login", json_body={"username": username, "password": password, "loginType": login_type}
        )
        self.session_token = answer["sessionToken"]
        self.user = answer.get("user")
        return dict(answer)

    async def logout(self) -> None:
        """End the session (it is refused from then on, by every KAM replica)."""
        await self.call("POST", "/auth/logout")
        self.session_token = None
        self.user = None

    async def change_password(self, current: str, new: str) -> dict[str, Any]:
        """Change the logged-in user's password; every other session of the user ends."""
        answer = await self.call("PUT", "/auth/password", json_body={"current_password": current, "new_password": new})
        if isinstance(answer, dict) and answer.get("sessionToken"):
            self.session_token = answer["sessionToken"]
        return dict(answer)

    async def create_client(self, client_id: str, *, name: str, **fields: Any) -> dict[str, Any]:
        """(admin) Create a client: a tenant of the platform."""
        return dict(await self.call("POST", "/clients", json_body={"client_id": client_id, "name": name, **fields}))

    async def clients(self) -> Any:
        """The clients the caller may see (an admin: all; a client: its own)."""
        return await self.call("GET", "/clients")

    async def create_user(self, client_id: str, username: str, password: str, **fields: Any) -> dict[str, Any]:
        """(admin) Create a user of ``client_id``."""
        body = {"username": username, "password": password, **fields}
        return dict(await self.call("POST", f"/clients/{client_id}/users", json_body=body))

    async def create_key(self, client_id: str, *, scopes: list[str] | None = None) -> dict[str, Any]:
        """(admin) Issue an API key for ``client_id``; the answer holds the secret, shown once."""
        body = {"scopes": scopes} if scopes is not None else {}
        return dict(await self.call("POST", f"/clients/{client_id}/keys", json_body=body))

    # -- requests, templates -------------------------------------------------------------------

    async def create_request(
        self, title: str, description: str = "", *, urgency: str = "normal", category: str = "", **fields: Any
    ) -> dict[str, Any]:
        """Ask for work (seed 002, phase 2)."""
        body = {"title": title, "description": description, "urgency": urgency, "category": category, **fields}
        return dict(await self.call("POST", "/requests", json_body=body))

    async def requests(self, **filters: Any) -> Any:
        """The requests the caller may see, newest first (filters: status, category, urgency, q, limit, cursor)."""
        return await self.call("GET", "/requests", query=filters)

    async def request(self, request_id: str) -> dict[str, Any]:
        """One request, with its history, template, execution, metrics and deliverables."""
        return dict(await self.call("GET", f"/requests/{request_id}"))

    async def templates(self, *, tier: str | None = None) -> Any:
        """The templates (``tier``: basic, standard or premium)."""
        return await self.call("GET", "/templates", query={"tier": tier})

    async def recommend(self, request_id: str, client_context: dict[str, Any] | None = None) -> dict[str, Any]:
        """(admin) Ranked templates for a request, each with a score and its reasons."""
        body = {"request_id": request_id, "client_context": client_context or {}}
        return dict(await self.call("POST", "/recommend-template", json_body=body))

    async def assign(
        self, request_id: str, template_id: str | int, template_name: str, parameters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """(admin) Choose the request's template and parameters (seed 002, phase 3)."""
        body = {"template_id": template_id, "template_name": template_name, "parameters": parameters or {}}
        return dict(await self.call("PUT", f"/requests/{request_id}", json_body=body))

    async def execute(self, request_id: str) -> dict[str, Any]:
        """(admin) Run the request's template on the workflow service (seed 002, phase 4)."""
        return dict(await self.call("POST", f"/requests/{request_id}/execute", json_body={}))

    # -- results -------------------------------------------------------------------------------

    async def deliverables(self, request_id: str) -> Any:
        """The deliverables recorded for a request."""
        return await self.call("GET", f"/requests/{request_id}/deliverables")

    async def deliverable(self, deliverable_id: str) -> bytes:
        """A deliverable's content (streamed by KAM from Raw)."""
        url = f"{self.base_url}/api/deliverables/{deliverable_id}"
        try:
            async with self._http().get(url, headers=self._headers("*/*")) as response:
                content = await response.read()
                if response.status >= 400:
                    body = _decode(content.decode(errors="replace"))
                    raise KamApiError(f"GET {url}: {response.status}", status=response.status, body=body)
                return content
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KamApiError(f"cannot reach KAM at {self.base_url} ({exc})") from exc

    async def costs(self, client_id: str, **query: Any) -> dict[str, Any]:
        """A client's costs (query: from, to, group = day | template)."""
        return dict(await self.call("GET", f"/clients/{client_id}/costs", query=query))

    async def audit(self, **query: Any) -> Any:
        """The audit records the caller may see."""
        return await self.call("GET", "/audit", query=query)

    async def notifications(self, *, last_event_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The caller's request transitions, live (Server-Sent Events), each as a dict with
        ``event``, ``id`` and ``data`` (decoded)."""
        headers = self._headers("text/event-stream")
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        url = f"{self.base_url}/api/notifications/stream"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
        try:
            async with self._http().get(url, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    body = _decode(await response.text())
                    raise KamApiError(f"GET {url}: {response.status}", status=response.status, body=body)
                async for event in parse_sse(response.content):
                    yield {**event, "data": _decode(event.get("data", ""))}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KamApiError(f"cannot reach KAM at {self.base_url} ({exc})") from exc
