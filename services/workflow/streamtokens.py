"""Stream tokens: how a browser opens an event stream without a long-lived credential in its URL.

A browser's ``EventSource`` (and its ``WebSocket``) cannot send headers, so the streaming routes
of the workflow service take two credentials besides the usual ``x-service-key`` header:

- the console's session cookie (``nexus.auth.SessionView``, accepted by every route);
- ``?access_token=nxs_…``: a token minted by ``POST /stream-tokens`` (any streaming path) or
  ``POST /job/{id}/monitor/token`` (a job's monitor) for the caller who asks, valid for one
  stream path and a few minutes (``NEXUS_STREAM_TOKEN_TTL_SECONDS``, 300 by default, at most
  900), on GET only.

The token is ``nxs_<payload>.<signature>``: the payload (base64url JSON) names the path, the
caller's key id, tenant and scopes, the expiry and a random nonce; the signature is an
HMAC-SHA256 under a key derived from ``NEXUS_UPLOAD_SIGNING_KEY`` (shared by the replicas), or
a random key of this process when that is unset (then a token opens streams on the replica that
minted it only). A token adds nothing to what its holder may see: it is checked again when the
stream opens (the key not revoked, the session still open) and the route's own owner check then
applies, so a token for another tenant's job opens nothing (404, as for a missing job).

A long-lived credential in a URL ends up in logs, browser history and proxies, so any query
parameter holding an API key, a worker token, a session token or a delegated token is refused
(400, ``credential_in_url``) before the route runs, whatever the route.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from nexus.auth import (
    AUTH,
    DELEGATED_SCOPE,
    DELEGATION_PREFIX,
    SESSION_KEY_PREFIX,
    CredentialRefused,
    KeyInfo,
    SessionView,
    nexus_error,
    parse_secret,
    parse_session_token,
)
from nexus.runtime import HTTPError, Service, json_response, read_json
from nexus.services.workflow.context import WorkflowContext

__all__ = [
    "ACCESS_TOKEN_PARAM",
    "STREAM_ROUTES",
    "STREAM_TOKENS",
    "TOKEN_PREFIX",
    "StreamClaims",
    "StreamTokens",
    "install",
    "secret_in_query",
]

TOKEN_PREFIX = "nxs"
"""The prefix of a stream token (``nxs_…``)."""
ACCESS_TOKEN_PARAM = "access_token"
"""The query parameter a stream token comes in."""
MAX_TTL_SECONDS = 900
"""A token claiming a longer life is refused, whoever signed it."""
MAX_TOKEN_LENGTH = 2048
STREAM_ROUTES = (
    "/job/{id}/monitor",
    "/api/opus/job/{id}/monitor",
    "/executions/{execution_id}/stream",
    "/users/{user_id}/updates",
    "/users/{user_id}/ws",
)
"""The route templates that accept ``?access_token=``: the service's event streams (and the
WebSocket of live updates, which a browser cannot give a header either)."""
_PATTERNS = tuple(re.compile("^" + re.sub(r"\\{[a-z_]+\\}", "[^/?#]+", re.escape(t)) + "$") for t in STREAM_ROUTES)
_PURPOSE = b"stream\n"


class _Payload(msgspec.Struct, frozen=True):
    p: str
    """The one path the token opens."""
    k: str
    """The key id of the caller who minted it (``session:<id>`` for a session)."""
    o: str
    """The caller's tenant (the key's owner)."""
    s: list[str]
    """The caller's scopes."""
    e: int
    """Expiry, Unix seconds."""
    n: str
    """A random nonce: two tokens minted in the same second differ."""


@dataclass(frozen=True)
class StreamClaims:
    """What a valid stream token says."""

    path: str
    key_id: str
    owner: str
    scopes: tuple[str, ...]
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def stream_path(path: object) -> str:
    """``path`` when it names one of the service's streams (``STREAM_ROUTES``), else a ValueError
    saying which paths are streams."""
    if not isinstance(path, str) or not any(p.match(path) for p in _PATTERNS):
        raise ValueError(
            f"path {path!r} is not a stream of this service; streams: {', '.join(STREAM_ROUTES)} "
            "(without a query string)"
        )
    return path


class StreamTokens:
    """Mints and verifies stream tokens.

    Args:
        key: The HMAC key (at least 32 bytes); never logged.
        ttl_seconds: How long a token stays valid (1 to ``MAX_TTL_SECONDS``).
        clock: Unix time source (tests move it).
    """

    def __init__(self, key: bytes, *, ttl_seconds: float = 300.0, clock: Callable[[], float] | None = None) -> None:
        if len(key) < 32:
            raise ValueError("the stream token key must be at least 32 bytes")
        if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")
        self._key = key
        self.ttl_seconds = ttl_seconds
        self._clock = clock or time.time

    @classmethod
    def from_setting(cls, signing_key: str, *, ttl_seconds: float = 300.0) -> StreamTokens:
        """Tokens under a key derived from ``NEXUS_UPLOAD_SIGNING_KEY`` (empty: a random key)."""
        if signing_key:
            key = hmac.new(signing_key.encode(), b"nexus stream tokens", hashlib.sha256).digest()
        else:
            key = secrets.token_bytes(32)
        return cls(key, ttl_seconds=ttl_seconds)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, _PURPOSE + payload.encode(), hashlib.sha256).digest())

    def mint(self, info: KeyInfo, path: str) -> tuple[str, int]:
        """A token opening ``path`` as ``info``'s holder, and its expiry (Unix seconds).

        Raises:
            ValueError: ``path`` is not a stream of the service.
        """
        expires_at = int(self._clock() + self.ttl_seconds)
        payload = _Payload(
            p=stream_path(path),
            k=info.key_id,
            o=info.owner,
            s=list(info.scopes),
            e=expires_at,
            n=secrets.token_hex(8),
        )
        body = _b64(msgspec.json.encode(payload))
        return f"{TOKEN_PREFIX}_{body}.{self._sign(body)}", expires_at

    def verify(self, token: str, path: str) -> StreamClaims:
        """The claims of ``token`` presented on ``path``.

        Raises:
            CredentialRefused: malformed, altered or not signed here, expired, or minted for
                another path; the message says which.
        """
        body, dot, signature = token.removeprefix(f"{TOKEN_PREFIX}_").partition(".")
        if not token.startswith(f"{TOKEN_PREFIX}_") or not dot or len(token) > MAX_TOKEN_LENGTH:
            raise CredentialRefused(
                "the access_token is not a stream token: mint one with POST /stream-tokens "
                "(or POST /job/{id}/monitor/token)"
            )
        if not hmac.compare_digest(self._sign(body).encode(), signature.encode()):
            raise CredentialRefused("the access_token's signature does not match (altered, or minted elsewhere)")
        try:
            claims = msgspec.json.decode(_unb64(body), type=_Payload)
        except (msgspec.DecodeError, binascii.Error, ValueError):
            raise CredentialRefused("the access_token's payload is malformed") from None
        now = self._clock()
        if now >= claims.e:
            raise CredentialRefused("the access_token expired: mint a new one (they last a few minutes)")
        if claims.e - now > MAX_TTL_SECONDS:
            raise CredentialRefused("the access_token claims a lifetime longer than a stream token may have")
        if claims.p != path:
            raise CredentialRefused(f"the access_token opens {claims.p} only, not {path}")
        return StreamClaims(path=claims.p, key_id=claims.k, owner=claims.o, scopes=tuple(claims.s), expires_at=claims.e)


def secret_in_query(request: web.Request) -> str | None:
    """The name of a query parameter holding a long-lived credential (an API key, a worker or
    delegated token, a session token), or None."""
    try:
        items = list(request.query.items())
    except (UnicodeDecodeError, ValueError):
        return None  # an undecodable query is the route's to refuse
    for name, value in items:
        value = value.strip()
        if parse_secret(value) or parse_session_token(value) or value.startswith(f"{DELEGATION_PREFIX}_"):
            return name
    return None


def _refusal(request: web.Request, message: str) -> web.Response:
    # The seed-000 job API answers in its own error shape; every other route in the platform's.
    if request.path.startswith(("/job", "/api/opus/")):
        body: dict[str, object] = {"success": False, "error": message}
    else:
        body = nexus_error("credential_in_url", message)
    return web.json_response(body, status=400)


@web.middleware
async def refuse_secrets_in_urls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (400) any request carrying a long-lived credential in its query string."""
    name = secret_in_query(request)
    if name is not None:
        return _refusal(
            request,
            f"query parameter {name!r} holds a long-lived credential (an API key or session token): never put "
            "one in a URL, where logs and browser history keep it. Send it in the x-service-key header, or "
            f"mint a short-lived stream token with POST /stream-tokens and pass it as ?{ACCESS_TOKEN_PARAM}=",
        )
    return await handler(request)


class StreamTokenAuth:
    """The service authenticator for ``?access_token=``: asked when a request has no API key."""

    def __init__(self, service: Service, tokens: StreamTokens, sessions: SessionView) -> None:
        self.service = service
        self.tokens = tokens
        self.sessions = sessions

    async def authenticate(self, request: web.Request) -> KeyInfo | None:
        token = request.query.get(ACCESS_TOKEN_PARAM)
        if token is None:
            return None
        resource = request.match_info.route.resource
        if request.method not in ("GET", "HEAD") or resource is None or resource.canonical not in STREAM_ROUTES:
            raise CredentialRefused(
                f"?{ACCESS_TOKEN_PARAM}= opens a stream only ({', '.join(STREAM_ROUTES)}, GET); "
                "send an API key or a session for this route"
            )
        claims = self.tokens.verify(token, request.path)
        await self._still_valid(claims)
        return KeyInfo(key_id=claims.key_id, kind="client", owner=claims.owner, scopes=claims.scopes)

    async def _still_valid(self, claims: StreamClaims) -> None:
        """Refuses a token whose key was revoked or whose session closed since it was minted."""
        if claims.key_id.startswith(SESSION_KEY_PREFIX):
            await self.sessions.refresh()
            session = self.sessions.get(claims.key_id.removeprefix(SESSION_KEY_PREFIX))
            if session is None or session.closed is not None or time.time() >= session.expires_at:
                raise CredentialRefused("the session this access_token was minted in is closed: log in again")
            return
        await self.service.keys.refresh()
        record = self.service.keys.record(claims.key_id)
        if record is None or record.revoked_by is not None:
            raise CredentialRefused("the API key this access_token was minted with was revoked")


STREAM_TOKENS = web.AppKey("nexus.workflow.stream_tokens", StreamTokens)


class StreamTokenRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /stream-tokens``."""

    path: str
    """The stream's path as the browser will open it, e.g. ``/api/opus/job/<id>/monitor``."""


class StreamTokenGranted(msgspec.Struct, frozen=True, kw_only=True):
    """A stream token: pass it as ``?access_token=`` on ``path`` before ``expiresAt``."""

    success: bool
    accessToken: str
    expiresAt: int
    """Unix seconds."""
    path: str
    url: str
    """``path`` with the token, on this service's public URL."""


def mint_for(request: web.Request, tokens: StreamTokens, path: str, public_url: str | None) -> StreamTokenGranted:
    """A token for the caller of ``request`` on ``path`` (a stream path).

    Raises:
        HTTPError: 403 for a delegated token (a workflow step has no browser), 400 for a path
            that is not a stream.
    """
    info: KeyInfo = request[AUTH]
    if DELEGATED_SCOPE in info.scopes:
        raise HTTPError(403, "a delegated token cannot mint stream tokens", error="forbidden")
    try:
        token, expires_at = tokens.mint(info, path)
    except ValueError as exc:
        raise HTTPError(400, str(exc), error="invalid_path") from None
    base = public_url or str(request.url.origin())
    return StreamTokenGranted(
        success=True,
        accessToken=token,
        expiresAt=expires_at,
        path=path,
        url=f"{base}{path}?{ACCESS_TOKEN_PARAM}={token}",
    )


def install(service: Service, ctx: WorkflowContext) -> StreamTokens:
    """Refuse long-lived credentials in URLs, accept stream tokens on the streaming routes, and
    add ``POST /stream-tokens``; returns the minter (the job API mints monitor tokens with it)."""
    settings = ctx.settings
    tokens = StreamTokens.from_setting(settings.upload_signing_key, ttl_seconds=settings.stream_token_ttl_seconds)
    service.app[STREAM_TOKENS] = tokens
    service.app.middlewares.append(refuse_secrets_in_urls)
    auth = StreamTokenAuth(service, tokens, SessionView(ctx.log))
    service.authenticator(auth.authenticate)

    @service.route(
        "POST",
        "/stream-tokens",
        summary="A short-lived token that opens one of the caller's streams from a browser (?access_token=)",
        request=StreamTokenRequest,
        response=StreamTokenGranted,
        status=201,
        responses={400: "The path is not a stream of this service", 403: "A delegated token"},
        tags=["streams"],
        auth="client",
    )
    async def mint(request: web.Request) -> web.Response:
        body = await read_json(request, StreamTokenRequest)
        granted = mint_for(request, tokens, body.path, settings.public_url)
        return json_response(granted, status=201)

    return tokens
