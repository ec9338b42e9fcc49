"""KAM's HTTP API: decode, call, encode. Domain routes arrive with their issues."""

from __future__ import annotations

import secrets

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo, hash_password, load_admin, verify_password
from nexus.runtime import HTTPError, Service, json_response, read_json

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


def install(service: Service) -> None:
    """Add KAM's routes to ``service``."""

    @service.route(
        "POST",
        "/v1/login",
        summary="Check a user's credentials",
        request=Login,
        response=LoginResult,
        tags=["accounts"],
        responses={401: "Unknown user or wrong password"},
    )
    async def login(request: web.Request) -> web.Response:
        """Checks the credentials against the Argon2id hash recorded in the log (the bootstrap admin)."""
        body = await read_json(request, Login)
        admin = await load_admin(service.log)
        # Verify even for an unknown user, so the answer takes as long either way.
        known = admin is not None and admin.user == body.user
        matches = verify_password(admin.password_hash if admin else _UNUSED_HASH, body.password)
        if not (known and matches):
            raise HTTPError(401, "unknown user or wrong password")
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
