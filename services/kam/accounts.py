"""KAM's accounts: logins and sessions, password changes, and the legacy ``/v1`` login.

``install`` is what the bootstrap calls: it installs the sessions (``sessions``), the audit
(``audit``), the clients and users (``clients``) and the API keys KAM issues (``keys``), then
declares the login routes here:

- ``POST /api/auth/login`` ``{username, password, loginType}`` (seed 002) answers
  ``{success, sessionToken, user, kamContext}`` and sets the console's cookie;
- ``POST /api/auth/logout`` closes the session; ``GET /api/auth/session`` says who the caller is;
- ``PUT /api/auth/password`` changes the logged-in user's password, closes every session of the
  user and answers a fresh one;
- ``POST /v1/login`` and ``GET /v1/whoami``, the earlier admin check and key check, unchanged.

Passwords are checked with Argon2id in a thread (the event loop keeps serving), against a dummy
hash when the user is unknown or the login type is not the user's, so every failure takes as
long as a wrong password. Failures are limited per (user name, address) and per address, with
the same limiters for both logins: 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets

import argon2
import msgspec
from aiohttp import web
from argon2.exceptions import InvalidHashError

from nexus.auth import AUTH, KeyInfo, SlidingWindowLimiter, hash_password, load_admin, verify_password
from nexus.proto import PLATFORM_TENANT, CloudEvent, new_event
from nexus.proto.events.kam import KamUserPasswordChanged
from nexus.runtime import ErrorBody, HTTPError, Service, json_response, read_json
from nexus.services.kam import audit, clients, keys, sessions
from nexus.services.kam.context import CLIENT_SCOPES, SESSION_KEY_PREFIX, KamContext
from nexus.services.kam.sessions import ADMIN_USER_ID, Account, Sessions, rfc3339
from nexus.services.kam.settings import KamSettings
from nexus.services.kam.state import PASSWORD_CHANGED

__all__ = ["LOGIN_TYPES", "LoginAnswer", "SessionAnswer", "install", "needs_rehash"]

logger = logging.getLogger(__name__)

# A valid Argon2id hash of a random string: verified against when the user is unknown.
_UNUSED_HASH = hash_password(secrets.token_urlsafe(16))
# The parameters nexus.auth hashes with now (read off a fresh hash, so they cannot drift apart).
_CURRENT = argon2.PasswordHasher.from_parameters(argon2.extract_parameters(_UNUSED_HASH))

LOGIN_TYPES = ("client", "admin")


def needs_rehash(password_hash: str) -> bool:
    """Whether ``password_hash`` was made with other Argon2 parameters than ``hash_password`` uses now."""
    try:
        return _CURRENT.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return False


# -- bodies -------------------------------------------------------------------------------------


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


class AuthLogin(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/auth/login`` (seed 002, phase 1)."""

    username: str
    password: str
    loginType: str
    """``client`` (a client's user) or ``admin``."""


class SessionUser(msgspec.Struct, frozen=True, kw_only=True):
    """The logged-in user."""

    id: str
    username: str
    role: str
    client_id: str | None
    display_name: str


class KamRole(msgspec.Struct, frozen=True, kw_only=True):
    """``kamContext``: what the caller may do."""

    role: str
    """``admin`` or ``client``."""
    client_id: str | None
    """The client the caller acts for; None for an admin."""
    permissions: list[str]
    """The scopes the caller holds (``admin``, or the client scopes)."""


class LoginAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A session: the token is shown here once (and set as the ``nexus_session`` cookie, with its
    CSRF token in the readable ``nexus_csrf`` cookie for the web console)."""

    success: bool = True
    sessionToken: str
    """``sess_<id>.<secret>``: send it as ``x-bitware-session-token`` or ``X-Session-Token``."""
    expiresAt: str
    """When the session ends at the latest (RFC 3339): it is not extended by use."""
    user: SessionUser
    kamContext: KamRole


class SessionAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """Who the caller is: a session's user, or an API key's client."""

    authenticated: str
    """``session`` or ``key``."""
    user: SessionUser | None
    """The session's user; None for an API key."""
    kamContext: KamRole
    expiresAt: str | None = None
    """The session's expiry; None for an API key."""
    key_id: str | None = None
    """The API key's id; None for a session."""


class LogoutAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The session is closed."""

    success: bool = True


class PasswordChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT /api/auth/password``."""

    current_password: str
    new_password: str
    """At least 12 characters."""


# -- limits --------------------------------------------------------------------------------------


PER_NAME_FACTOR = 10
"""A user name's failures from every address together may reach this many times the per-(user,
address) limit within the window before that name is refused from everywhere."""


def address_bucket(address: str) -> str:
    """What the per-address limit counts: the address, or its /64 for IPv6 (one host commonly
    holds a whole /64, so counting single addresses would not limit it at all)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimits:
    """Failed logins per (user name, address), per address and per user name, shared by both logins.

    The per-(user, address) limit is tight; the per-name one (``PER_NAME_FACTOR`` times it) bounds
    guessing one user's password from many addresses, yet is loose enough that failing on
    purpose from one address cannot lock the user out, and the right password from another
    address still works until the name's limit is reached.
    """

    def __init__(self, settings: KamSettings) -> None:
        window = settings.login_window_seconds
        self.per_user = SlidingWindowLimiter(settings.login_failures_per_user, window)
        self.per_address = SlidingWindowLimiter(settings.login_failures_per_address, window)
        self.per_name = SlidingWindowLimiter(settings.login_failures_per_user * PER_NAME_FACTOR, window)

    def refuse(self, user_key: str, address: str) -> web.Response | None:
        """A 429 while a limit is reached; else counts the attempt (taken back on success).

        Counted before the slow check, so a burst of parallel attempts is bounded too."""
        bucket, name = address_bucket(address), user_key.split("\x00", 1)[0].casefold()
        wait = max(
            self.per_user.retry_after_seconds(user_key),
            self.per_address.retry_after_seconds(bucket),
            self.per_name.retry_after_seconds(name),
        )
        if wait:
            message = f"too many failed logins for this user or from {address}; retry in {wait} s"
            body = ErrorBody(error="too_many_requests", message=message)
            return json_response(body, status=429, headers={"Retry-After": str(wait)})
        self.per_user.hit(user_key)
        self.per_address.hit(bucket)
        self.per_name.hit(name)
        return None

    def succeeded(self, user_key: str, address: str) -> None:
        """Forget the user's failures from this address and take back this attempt's counts."""
        self.per_user.reset(user_key)
        self.per_address.forgive(address_bucket(address))
        self.per_name.forgive(user_key.split("\x00", 1)[0].casefold())


# -- the routes ----------------------------------------------------------------------------------


def _user_of(account: Account) -> SessionUser:
    return SessionUser(
        id=account.user_id,
        username=account.username,
        role=account.role,
        client_id=account.client_id,
        display_name=account.display_name,
    )


def _role_of(info: KeyInfo) -> KamRole:
    if info.is_admin:
        return KamRole(role="admin", client_id=None, permissions=list(info.scopes))
    # A key issued without scopes may call every client route (nexus.auth.has_scope).
    return KamRole(role="client", client_id=info.tenant, permissions=list(info.scopes or CLIENT_SCOPES))


class AuthRoutes:
    """Login, logout, who-am-I and password change (``/api/auth/...``), and the legacy ``/v1`` login."""

    def __init__(self, ctx: KamContext, sessions: Sessions, limits: LoginLimits) -> None:
        self.ctx = ctx
        self.sessions = sessions
        self.limits = limits

    async def _account(self, username: str, login_type: str) -> Account | None:
        """The account ``username`` logs in to with ``login_type``, or None."""
        state = self.ctx.state
        user = state.user_named(username)
        if login_type == "admin":
            admin = await load_admin(self.ctx.service.log)
            if admin is not None and admin.user.casefold() == username.casefold():
                return Account(ADMIN_USER_ID, admin.user, "admin", None, "Administrator", admin.password_hash, True)
            return Account.of(user) if user is not None and user.role == "admin" else None
        if user is not None and user.role == "client" and user.client_id in state.clients:
            return Account.of(user)
        return None

    async def _bootstrap_name(self, account: Account) -> Account:
        if not account.bootstrap or account.username:
            return account
        admin = await load_admin(self.ctx.service.log)
        return Account(ADMIN_USER_ID, admin.user if admin else "", "admin", None, "Administrator", "", True)

    def _answer(self, request: web.Request, token: str, csrf: str, account: Account, expires_at: float) -> web.Response:
        session_id = token.removeprefix(sessions.TOKEN_PREFIX).split(".", 1)[0]
        caller = account.key_info(session_id)
        answer = LoginAnswer(
            sessionToken=token,
            expiresAt=rfc3339(expires_at),
            user=_user_of(account),
            kamContext=_role_of(caller),
        )
        response = json_response(answer)
        self.sessions.set_cookie(request, response, token, csrf)
        # Recorded as the session's later calls are: the user, and the tenant it acts for.
        request[audit.AUDIT_ACTOR] = (f"user:{account.user_id}", caller.tenant)
        return response

    async def login(self, request: web.Request) -> web.Response:
        """Checks the password against the user's Argon2id hash and opens a session (seed 002,
        phase 1): the token in the answer and in an HttpOnly, SameSite=Strict cookie. An unknown
        user, a wrong password and a login type that is not the user's role get the same 401,
        in the same time. Failures are limited per user and address and per address (429 with
        ``Retry-After``). A hash made with older Argon2 parameters is replaced on success."""
        body = await read_json(request, AuthLogin)
        if body.loginType not in LOGIN_TYPES:
            raise HTTPError(400, f"loginType {body.loginType!r}: use 'client' or 'admin'")
        address = request.remote or "unknown"
        user_key = f"{body.username.casefold()}\x00{address}"
        refused = self.limits.refuse(user_key, address)
        if refused is not None:
            return refused
        account = await self._account(body.username, body.loginType)
        # Verified even when there is no such account, so the answer takes as long either way;
        # in a thread, so the event loop keeps serving while Argon2 works.
        matches = await asyncio.to_thread(
            verify_password, account.password_hash if account else _UNUSED_HASH, body.password
        )
        if account is None or not matches:
            raise HTTPError(401, "unknown user or wrong password")
        self.limits.succeeded(user_key, address)
        await self._rehash(account, body.password)
        token, csrf, session = await self.sessions.open(account, address)
        return self._answer(request, token, csrf, account, session.expires_at)

    async def _rehash(self, account: Account, password: str) -> None:
        """Replace a hash made with older Argon2 parameters (the password is the same).

        The bootstrap admin's hash is ``NEXUS_ADMIN_PASSWORD``'s, recorded at start; it is left alone."""
        if account.bootstrap or not needs_rehash(account.password_hash):
            return
        new_hash = await asyncio.to_thread(hash_password, password)
        state = self.ctx.state

        def decide() -> list[CloudEvent]:
            user = state.users.get(account.user_id)
            if user is None or user.password_hash != account.password_hash:
                return []  # changed meanwhile: nothing to upgrade
            data = KamUserPasswordChanged(user_id=account.user_id, password_hash=new_hash, reason="rehashed")
            return [new_event(PASSWORD_CHANGED, data, source=self.ctx.source, subject=account.user_id)]

        try:
            await clients.append_accounts(self.ctx, decide)
        except Exception:
            # The login stands; the hash is upgraded at a later login.
            logger.exception("rehashing the password of %s failed", account.user_id)

    def _session_of(self, info: KeyInfo, what: str) -> tuple[str, Account]:
        if not info.key_id.startswith(SESSION_KEY_PREFIX):
            raise HTTPError(
                400, f"{what} needs a login session, not an API key (revoke keys with DELETE .../keys/{{id}})"
            )
        session_id = info.key_id.removeprefix(SESSION_KEY_PREFIX)
        session = self.ctx.state.sessions[session_id]
        account = self.sessions.account(session.user_id)
        if account is None:
            raise HTTPError(401, "the session's user no longer exists")
        return session_id, account

    async def logout(self, request: web.Request) -> web.Response:
        """Closes the caller's session (every KAM replica refuses it from then on) and clears the cookie."""
        session_id, _ = self._session_of(request[AUTH], "logout")
        await self.sessions.close([session_id], "logout")
        response = json_response(LogoutAnswer())
        self.sessions.clear_cookie(request, response)
        return response

    async def session(self, request: web.Request) -> web.Response:
        """Who the caller is: the session's user and its expiry, or the API key's client; and what it may do."""
        info: KeyInfo = request[AUTH]
        if not info.key_id.startswith(SESSION_KEY_PREFIX):
            return json_response(
                SessionAnswer(authenticated="key", user=None, kamContext=_role_of(info), key_id=info.key_id)
            )
        session_id, account = self._session_of(info, "")
        account = await self._bootstrap_name(account)
        expires = self.ctx.state.sessions[session_id].expires_at
        answer = SessionAnswer(
            authenticated="session", user=_user_of(account), kamContext=_role_of(info), expiresAt=rfc3339(expires)
        )
        return json_response(answer)

    async def change_password(self, request: web.Request) -> web.Response:
        """Changes the logged-in user's password: checks the current one, records the new hash,
        closes every session of the user (this one too: reason ``password_changed``) and answers a
        new session, as a login does. Wrong current passwords count as failed logins (429)."""
        _, account = self._session_of(request[AUTH], "changing a password")
        if account.bootstrap:
            raise HTTPError(
                400, "the bootstrap admin's password is NEXUS_ADMIN_PASSWORD: change it there and restart KAM"
            )
        body = await read_json(request, PasswordChange)
        clients.check_new_password(body.new_password, "new_password")
        if body.new_password == body.current_password:
            raise HTTPError(400, "new_password is the current password: choose another")
        address = request.remote or "unknown"
        user_key = f"{account.username.casefold()}\x00{address}"
        refused = self.limits.refuse(user_key, address)
        if refused is not None:
            return refused
        if not await asyncio.to_thread(verify_password, account.password_hash, body.current_password):
            raise HTTPError(403, "current_password is not the user's password", error="wrong_password")
        self.limits.succeeded(user_key, address)
        new_hash = await asyncio.to_thread(hash_password, body.new_password)
        state = self.ctx.state

        def decide() -> list[CloudEvent]:
            user = state.users.get(account.user_id)
            if user is None or user.password_hash != account.password_hash:
                raise HTTPError(409, "the password was changed meanwhile: log in again")
            data = KamUserPasswordChanged(user_id=account.user_id, password_hash=new_hash, reason="changed")
            return [new_event(PASSWORD_CHANGED, data, source=self.ctx.source, subject=account.user_id)]

        await clients.append_accounts(self.ctx, decide)
        await self.sessions.close(self.sessions.open_sessions_of(account.user_id), "password_changed")
        fresh = Account.of(state.users[account.user_id])
        token, csrf, session = await self.sessions.open(fresh, address)
        return self._answer(request, token, csrf, fresh, session.expires_at)

    # -- the legacy /v1 routes ---------------------------------------------------------------

    async def legacy_login(self, request: web.Request) -> web.Response:
        """Checks the credentials against the Argon2id hash recorded in the log (the bootstrap admin).
        Failed attempts are limited per user and client address and per address (429 with
        ``Retry-After``). Opens no session: ``POST /api/auth/login`` does."""
        body = await read_json(request, Login)
        address = request.remote or "unknown"
        user_key = f"{body.user}\x00{address}"
        refused = self.limits.refuse(user_key, address)
        if refused is not None:
            return refused
        admin = await load_admin(self.ctx.service.log)
        known = admin is not None and admin.user == body.user
        matches = await asyncio.to_thread(
            verify_password, admin.password_hash if admin else _UNUSED_HASH, body.password
        )
        if not (known and matches):
            raise HTTPError(401, "unknown user or wrong password")
        self.limits.succeeded(user_key, address)
        request[audit.AUDIT_ACTOR] = (f"user:{ADMIN_USER_ID}", PLATFORM_TENANT)
        return json_response(LoginResult(user=body.user, role="admin"))

    async def whoami(self, request: web.Request) -> web.Response:
        """Lets a client check its key: answers with the key's id and owner, never the secret."""
        info: KeyInfo = request[AUTH]
        return json_response(Caller(key_id=info.key_id, kind=info.kind, owner=info.owner, scopes=list(info.scopes)))


def install(ctx: KamContext) -> None:
    """Add accounts to KAM: sessions, the audit, clients and users, API keys, the login routes."""
    service: Service = ctx.service
    the_sessions = sessions.install(ctx)
    audit.install(ctx)
    routes = AuthRoutes(ctx, the_sessions, LoginLimits(ctx.settings))
    too_many = "Too many failed logins for this user or from this address; retry after Retry-After seconds"

    service.route(
        "POST",
        "/v1/login",
        summary="Check a user's credentials",
        request=Login,
        response=LoginResult,
        tags=["accounts"],
        responses={401: "Unknown user or wrong password", 429: too_many},
    )(routes.legacy_login)
    service.route(
        "GET",
        "/v1/whoami",
        summary="The client an API key belongs to",
        response=Caller,
        tags=["keys"],
        auth="client",
    )(routes.whoami)
    ctx.route(
        "POST",
        "/auth/login",
        summary="Log in: a session token for a client's user or an admin",
        request=AuthLogin,
        response=LoginAnswer,
        tags=["accounts"],
        responses={400: "The body or loginType is not valid", 401: "Unknown user or wrong password", 429: too_many},
    )(routes.login)
    ctx.route(
        "POST",
        "/auth/logout",
        summary="Log out: close the caller's session",
        response=LogoutAnswer,
        tags=["accounts"],
        auth="client",
        responses={400: "The caller presented an API key, not a session"},
    )(routes.logout)
    ctx.route(
        "GET",
        "/auth/session",
        summary="Who the caller is and what it may do",
        response=SessionAnswer,
        tags=["accounts"],
        auth="client",
    )(routes.session)
    ctx.route(
        "PUT",
        "/auth/password",
        summary="Change the logged-in user's password (every session of the user ends; a new one is answered)",
        request=PasswordChange,
        response=LoginAnswer,
        tags=["accounts"],
        auth="client",
        responses={
            400: "The new password is weak, or the caller presented an API key",
            403: "current_password is wrong",
            409: "The password was changed meanwhile",
            429: too_many,
        },
    )(routes.change_password)
    clients.install(ctx)
    keys.install(ctx)
