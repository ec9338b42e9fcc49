"""aiohttp handler guards: API keys for clients, bearer tokens for workers; who may see what."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from nexus.auth._delegation import DELEGATED_SCOPE
from nexus.auth._keys import ADMIN_SCOPE, KeyInfo, KeyView

HandlerT = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guard = Callable[[HandlerT], HandlerT]
Authenticator = Callable[[web.Request], Awaitable[KeyInfo | None]]
"""Another credential a client route accepts besides an API key (KAM's login sessions).

Called when the request carries no API key: answers the holder's KeyInfo when the request
carries this kind of credential and it is valid, None when it carries none, and raises
CredentialRefused when it carries one that is not valid (expired, logged out)."""


class CredentialRefused(Exception):
    """An Authenticator found its credential in the request and refuses it (401, with this message).

    ``status=403`` (with ``error``) refuses a credential that is valid but not enough for this
    request: a session cookie without its CSRF token on a request that changes something.
    """

    def __init__(self, message: str, *, status: int = 401, error: str = "unauthorized") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


AUTH: web.RequestKey[KeyInfo] = web.RequestKey("nexus_auth", KeyInfo)
"""``request[AUTH]``: the KeyInfo of the caller of a guarded handler."""
WORKER_ID: web.RequestKey[str] = web.RequestKey("nexus_worker_id", str)
"""``request[WORKER_ID]``: the ``X-Worker-ID`` of the caller of a worker route."""

API_KEY_HEADERS = ("x-service-key", "X-API-Key")
"""Headers a client's API key may come in (case-insensitive)."""


ErrorShape = Callable[[str, str], dict[str, object]]
"""Builds an error body from (code, message): the platform's ``{"error", "message"}`` by default."""


def nexus_error(error: str, message: str) -> dict[str, object]:
    """The platform's error body: ``{"error": code, "message": words}``."""
    return {"error": error, "message": message}


def can_see(info: KeyInfo, tenant: str | None) -> bool:
    """Whether the holder of ``info`` may see and change a resource owned by ``tenant``.

    Its own tenant's resources, or every resource for an admin. A resource with no tenant
    (``None``) is visible to admins only.
    """
    return info.is_admin or (tenant is not None and tenant == info.tenant)


def has_scope(info: KeyInfo, scope: str | None) -> bool:
    """Whether the holder of ``info`` may call a route that needs ``scope``.

    An admin may call every route; only an admin may call a route needing ``admin``. A key
    issued without scopes may call every client route (keys issued before scopes existed, and
    ``nexus keys create`` without ``--scope``); a key issued with scopes, only the routes whose
    scope it lists. A delegated token (a workflow step acting for a tenant) carries only
    ``delegated``, so it reaches no route that needs a scope.
    """
    if scope is None or info.is_admin:
        return True
    if scope == ADMIN_SCOPE:
        return False
    if not info.scopes:
        return True
    return scope in info.scopes and not (DELEGATED_SCOPE in info.scopes and scope != DELEGATED_SCOPE)


def _refuse(
    status: int, error: str, message: str, *, bearer: bool = False, shape: ErrorShape = nexus_error
) -> web.HTTPException:
    cls = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    headers = {"WWW-Authenticate": 'Bearer realm="nexus"'} if bearer and status == 401 else None
    return cls(text=json.dumps(shape(error, message)), content_type="application/json", headers=headers)


def _api_key(request: web.Request) -> str | None:
    return next((request.headers[h] for h in API_KEY_HEADERS if h in request.headers), None)


def require_api_key(
    view: KeyView, *, shape: ErrorShape = nexus_error, authenticators: Sequence[Authenticator] = ()
) -> Guard:
    """Guard a handler with a client API key from ``x-service-key`` or ``X-API-Key``.

    The handler finds the caller in ``request[AUTH]`` (a KeyInfo). A missing, unknown or
    revoked key is refused with 401; a worker token is refused with 403 (it is not a client key).
    Without an API key, each of ``authenticators`` is asked in turn (KAM's sessions); the first
    that recognises its credential decides.

    Example::

        @require_api_key(keys)
        async def create_request(request: web.Request) -> web.Response:
            owner = request[AUTH].owner
    """

    def guard(handler: HandlerT) -> HandlerT:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            secret = _api_key(request)
            if not secret:
                for authenticate in authenticators:
                    try:
                        found = await authenticate(request)
                    except CredentialRefused as exc:
                        raise _refuse(exc.status, exc.error, str(exc), shape=shape) from None
                    if found is not None:
                        request[AUTH] = found
                        return await handler(request)
                message = "an API key is required: send it in x-service-key or X-API-Key"
                if authenticators:
                    message = "an API key or a session is required: send X-API-Key or X-Session-Token"
                raise _refuse(401, "unauthorized", message, shape=shape)
            info = await view.verify(secret)
            if info is None:
                raise _refuse(401, "unauthorized", "the API key is not valid or was revoked", shape=shape)
            if info.kind != "client":
                raise _refuse(403, "forbidden", "a worker token cannot call client routes", shape=shape)
            request[AUTH] = info
            return await handler(request)

        return guarded

    return guard


def require_worker(view: KeyView, *, shape: ErrorShape = nexus_error) -> Guard:
    """Guard a handler with ``Authorization: Bearer <worker token>`` (and ``X-Worker-ID``).

    The handler finds the token's KeyInfo in ``request[AUTH]`` and the worker id in
    ``request[WORKER_ID]``. A worker's identity is its token's: ``X-Worker-ID`` may be left out
    (it is the token's owner), and one naming another worker is refused 403 ``worker_mismatch``.
    Missing header, unknown or revoked token: 401. A client API key presented as the bearer
    token: 403.
    """

    def guard(handler: HandlerT) -> HandlerT:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                message = "a worker token is required: Authorization: Bearer <token>"
                raise _refuse(401, "unauthorized", message, bearer=True, shape=shape)
            info: KeyInfo | None = await view.verify(token.strip())
            if info is None:
                message = "the worker token is not valid or was revoked"
                raise _refuse(401, "unauthorized", message, bearer=True, shape=shape)
            if info.kind != "worker":
                raise _refuse(403, "forbidden", "a client API key cannot call worker routes", shape=shape)
            claimed = request.headers.get("X-Worker-ID", "").strip() or info.owner
            if claimed != info.owner:
                message = f"X-Worker-ID {claimed!r} is not the worker this token was issued to; send {info.owner!r}"
                raise _refuse(403, "worker_mismatch", message, shape=shape)
            request[AUTH] = info
            request[WORKER_ID] = info.owner
            return await handler(request)

        return guarded

    return guard


def require_client_or_worker(
    view: KeyView, *, shape: ErrorShape = nexus_error, authenticators: Sequence[Authenticator] = ()
) -> Guard:
    """Guard a handler that both clients and workers call (a workflow step on a client's behalf,
    or an external worker): ``Authorization: Bearer <worker token>`` with ``X-Worker-ID`` when an
    Authorization header is sent, else a client API key (or a delegated token) as in
    ``require_api_key``."""
    as_worker = require_worker(view, shape=shape)
    as_client = require_api_key(view, shape=shape, authenticators=authenticators)

    def guard(handler: HandlerT) -> HandlerT:
        worker_handler, client_handler = as_worker(handler), as_client(handler)

        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            if "Authorization" in request.headers and _api_key(request) is None:
                return await worker_handler(request)
            return await client_handler(request)

        return guarded

    return guard


def require_scope(scope: str, *, shape: ErrorShape = nexus_error) -> Guard:
    """Guard a handler (inside an authentication guard) with a scope: 403 when the caller's key
    or session lacks it (see ``has_scope``)."""

    def guard(handler: HandlerT) -> HandlerT:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not has_scope(request[AUTH], scope):
                what = "an admin" if scope == ADMIN_SCOPE else f"scope {scope!r}"
                message = f"this route needs {what}; the credential presented lacks it"
                raise _refuse(403, "forbidden", message, shape=shape)
            return await handler(request)

        return guarded

    return guard
