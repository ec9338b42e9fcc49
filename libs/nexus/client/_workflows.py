"""The workflow API client: register definitions, start executions, read their state and history, follow them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp

from nexus.client._session import ServiceSession
from nexus.client._sse import parse_sse

__all__ = ["EXECUTION_FINAL_STATUSES", "WorkflowApiError", "WorkflowClient"]

EXECUTION_FINAL_STATUSES: Final = frozenset({"COMPLETED", "FAILED", "COMPENSATED", "CANCELLED", "TIMED_OUT"})
"""Execution statuses after which nothing changes."""


class WorkflowApiError(Exception):
    """The workflow API answered with an error, or could not be reached.

    Attributes:
        status: HTTP status (0 when no answer came; the cause is the connection error).
        body: The decoded error body, when there was one (``{"message": …}`` for a body that is not JSON).
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


class WorkflowClient(ServiceSession):
    """A client of the workflow service's HTTP API (``/workflows``, ``/schemas``, ``/executions``).

    Args:
        base_url: The workflow service, e.g. ``http://127.0.0.1:8082``.
        service_key: A client API key, sent as ``x-service-key``.
        session: An aiohttp session to reuse; one is created (and closed by ``close``) otherwise.
        timeout: Seconds per request (``follow``'s stream has no total bound, only this to connect).

    Example::

        async with WorkflowClient(url, key) as client:
            accepted = await client.start("text_expansion", {"title": "Tea", "text": "…"})
            async for state in client.follow(accepted["id"]):
                print(state["status"])
    """

    def __init__(
        self,
        base_url: str,
        service_key: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(base_url, service_key, session=session)
        self._timeout = timeout

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        return {"x-service-key": self._key, "Accept": accept}

    def _unreachable(self, exc: BaseException) -> WorkflowApiError:
        error = WorkflowApiError(f"cannot reach the workflow service at {self.base_url} ({exc})")
        error.__cause__ = exc
        return error

    async def call(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None) -> dict[str, Any]:
        """One request; the decoded JSON answer (every route of the service answers an object).

        Raises:
            WorkflowApiError: the service is unreachable (status 0) or answers an error.
        """
        try:
            async with self._http().request(
                method,
                self.base_url + path,
                json=json_body if data is None else None,
                data=data,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise self._unreachable(exc) from exc
        body = _decode(text)
        if status >= 400:
            raise WorkflowApiError(f"{method} {path}: {status} {_message(body)}".rstrip(), status=status, body=body)
        if not isinstance(body, dict):
            raise WorkflowApiError(f"{method} {path}: the answer is not a JSON object", status=status, body=body)
        return body

    async def register(self, document: bytes | str, kind: str = "workflow") -> dict[str, Any]:
        """``POST /workflows`` (``kind="workflow"``) or ``POST /schemas`` (``"schema"``): the stored definition."""
        raw = document.encode() if isinstance(document, str) else document
        return await self.call("POST", "/schemas" if kind == "schema" else "/workflows", data=raw)

    async def workflow(self, workflow_id: str) -> dict[str, Any]:
        """``GET /workflows/{id}``: the workflow's current definition."""
        return await self.call("GET", f"/workflows/{workflow_id}")

    async def start(
        self, workflow_id: str, input: Any, *, priority: int = 50, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``POST /executions``: queue an execution; ``{id, status, workflow_id}``."""
        body: dict[str, Any] = {"workflow_id": workflow_id, "input": input, "priority": priority}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        return await self.call("POST", "/executions", json_body=body)

    async def get(self, execution_id: str) -> dict[str, Any]:
        """``GET /executions/{id}``: the execution's current state."""
        return await self.call("GET", f"/executions/{execution_id}")

    async def history(self, execution_id: str) -> list[dict[str, Any]]:
        """``GET /executions/{id}/events``: the execution's events (its transitions), oldest first."""
        return list((await self.call("GET", f"/executions/{execution_id}/events"))["events"])

    async def follow(self, execution_id: str) -> AsyncIterator[dict[str, Any]]:
        """The execution's state after each transition, until a final one (``GET /executions/{id}/stream``).

        Raises:
            WorkflowApiError: the service is unreachable (status 0) or refuses the stream.
        """
        path = f"/executions/{execution_id}/stream"
        try:
            async with self._http().get(
                self.base_url + path,
                headers=self._headers("text/event-stream"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
            ) as response:
                if response.status >= 400:
                    body = _decode(await response.text())
                    raise WorkflowApiError(
                        f"GET {path}: {response.status} {_message(body)}".rstrip(), status=response.status, body=body
                    )
                async for event in parse_sse(response.content):
                    if not event.get("data"):
                        continue
                    state = json.loads(event["data"])
                    yield state
                    if state.get("status") in EXECUTION_FINAL_STATUSES:
                        return
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise self._unreachable(exc) from exc


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or "")
    return ""
