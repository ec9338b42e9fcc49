"""KAM's accounts: logins, sessions, clients, users, API keys, audit."""

from __future__ import annotations

import asyncio
import secrets

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo, SlidingWindowLimiter, hash_password, load_admin, verify_password
from nexus.runtime import ErrorBody, HTTPError, Service, json_response, read_json
from nexus.services.kam.context import KamContext
from nexus.services.kam.settings import KamSettings

# A valid Argon2id hash of a random string: verified against when the user is unknown.
_UNUSED_HASH = hash_password(secrets.token_urlsafe(16))


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who the presented API key belongs to."""

    key_id: str
    """Public id of the key."""
    kind: str
    """``client``."""
    owner: str
    """The client the key was issued to."""
    scopes: list[str] = []


class Login(msgspec.Struct, frozen=True, kw_only=True):
    """Credentials to check."""

    user: str
    password: str


class LoginResult(msgspec.Struct, frozen=True, kw_only=True):
    """The account the credentials belong to."""

    user: str
    role: str
    """``admin`` for the bootstrap admin."""


def install(ctx: KamContext) -> None:
    """Add the accounts routes to KAM."""
    service: Service = ctx.service
    settings = service.settings
    assert isinstance(settings, KamSettings)
    window = settings.login_window_seconds
    # Failures per (user, client address) and per address. Not per user alone: that would let
    # anyone lock the admin out by failing on purpose, and the right password from another
    # address must still work.
    per_user = SlidingWindowLimiter(settings.login_failures_per_user, window)
    per_address = SlidingWindowLimiter(settings.login_failures_per_address, window)

    @service.route(
        "POST",
        "/v1/login",
        summary="Check a user's credentials",
        request=Login,
        response=LoginResult,
        tags=["accounts"],
        responses={
            401: "Unknown user or wrong password",
            429: "Too many failed logins for this user or from this address; retry after Retry-After seconds",
        },
    )
    async def login(request: web.Request) -> web.Response:
        """Checks the credentials against the Argon2id hash recorded in the log (the bootstrap admin).
        Failed attempts are limited per user and client address and per address (429 with
        ``Retry-After``)."""
        body = await read_json(request, Login)
        address = request.remote or "unknown"
        user_key = f"{body.user}\x00{address}"
        wait = max(per_user.retry_after_seconds(user_key), per_address.retry_after_seconds(address))
        if wait:
            message = f"too many failed logins for this user or from {address}; retry in {wait} s"
            body_429 = ErrorBody(error="too_many_requests", message=message)
            return json_response(body_429, status=429, headers={"Retry-After": str(wait)})
        # Counted before the slow check, so a burst of parallel attempts is bounded too;
        # taken back when the credentials turn out right.
        per_user.hit(user_key)
        per_address.hit(address)
        admin = await load_admin(service.log)
        # Verify even for an unknown user, so the answer takes as long either way; in a thread,
        # so the event loop keeps serving while Argon2 works.
        known = admin is not None and admin.user == body.user
        matches = await asyncio.to_thread(
            verify_password, admin.password_hash if admin else _UNUSED_HASH, body.password
        )
        if not (known and matches):
            raise HTTPError(401, "unknown user or wrong password")
        per_user.reset(user_key)
        per_address.forgive(address)
        return json_response(LoginResult(user=body.user, role="admin"))

    @service.route(
        "GET",
        "/v1/whoami",
        summary="The client an API key belongs to",
        response=Caller,
        tags=["keys"],
        auth="client",
    )
    async def whoami(request: web.Request) -> web.Response:
        """Lets a client check its key: answers with the key's id and owner, never the secret."""
        info: KeyInfo = request[AUTH]
        return json_response(Caller(key_id=info.key_id, kind=info.kind, owner=info.owner, scopes=list(info.scopes)))
