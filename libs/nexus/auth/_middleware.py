"""aiohttp handler guards: API keys for clients, bearer tokens for workers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

from nexus.auth._keys import KeyInfo, KeyView

HandlerT = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guard = Callable[[HandlerT], HandlerT]

AUTH: web.RequestKey[KeyInfo] = web.RequestKey("nexus_auth", KeyInfo)
"""``request[AUTH]``: the KeyInfo of the caller of a guarded handler."""
WORKER_ID: web.RequestKey[str] = web.RequestKey("nexus_worker_id", str)
"""``request[WORKER_ID]``: the ``X-Worker-ID`` of the caller of a worker route."""

API_KEY_HEADERS = ("x-service-key", "X-API-Key")
"""Headers a client's API key may come in (case-insensitive)."""


def _refuse(status: int, error: str, message: str, *, bearer: bool = False) -> web.HTTPException:
    cls = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    headers = {"WWW-Authenticate": 'Bearer realm="nexus"'} if bearer and status == 401 else None
    return cls(
        text=f'{{"error":"{error}","message":"{message}"}}',
        content_type="application/json",
        headers=headers,
    )


def require_api_key(view: KeyView) -> Guard:
    """Guard a handler with a client API key from ``x-service-key`` or ``X-API-Key``.

    The handler finds the caller in ``request[AUTH]`` (a KeyInfo). A missing, unknown or
    revoked key is refused with 401; a worker token is refused with 403 (it is not a client key).

    Example::

        @require_api_key(keys)
        async def create_request(request: web.Request) -> web.Response:
            owner = request[AUTH].owner
    """

    def guard(handler: HandlerT) -> HandlerT:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            secret = next((request.headers[h] for h in API_KEY_HEADERS if h in request.headers), None)
            if not secret:
                raise _refuse(401, "unauthorized", "an API key is required: send it in x-service-key or X-API-Key")
            info = await view.verify(secret)
            if info is None:
                raise _refuse(401, "unauthorized", "the API key is not valid or was revoked")
            if info.kind != "client":
                raise _refuse(403, "forbidden", "a worker token cannot call client routes")
            request[AUTH] = info
            return await handler(request)

        return guarded

    return guard


def require_worker(view: KeyView) -> Guard:
    """Guard a handler with ``Authorization: Bearer <worker token>`` and ``X-Worker-ID``.

    The handler finds the token's KeyInfo in ``request[AUTH]`` and the worker id in
    ``request[WORKER_ID]``. Missing header, unknown or revoked token: 401. A client API key
    presented as the bearer token: 403.
    """

    def guard(handler: HandlerT) -> HandlerT:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                message = "a worker token is required: Authorization: Bearer <token>"
                raise _refuse(401, "unauthorized", message, bearer=True)
            worker_id = request.headers.get("X-Worker-ID", "").strip()
            if not worker_id:
                raise _refuse(401, "unauthorized", "the X-Worker-ID header is required", bearer=True)
            info: KeyInfo | None = await view.verify(token.strip())
            if info is None:
                raise _refuse(401, "unauthorized", "the worker token is not valid or was revoked", bearer=True)
            if info.kind != "worker":
                raise _refuse(403, "forbidden", "a client API key cannot call worker routes")
            request[AUTH] = info
            request[WORKER_ID] = worker_id
            return await handler(request)

        return guarded

    return guard
