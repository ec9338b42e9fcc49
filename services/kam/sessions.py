"""KAM's login sessions: the token, where it is accepted, and what it is refused for.

A session token is ``sess_<session id>.<43 url-safe characters>`` (256 random bits). The token is
shown once, in the login's answer (and its cookie); the log keeps only its sha256, in
``nexus.kam.session.opened`` (stream ``kam-sessions``), with an absolute expiry
(``NEXUS_KAM_SESSION_TTL_SECONDS``, 24 h by default). Logout and a password change append
``nexus.kam.session.closed``. Every replica folds both into ``KamState.sessions``, so a session
opened on one replica is accepted by all of them, and one closed on any is refused by all once
their fold has the event.

The token is accepted from the header ``x-bitware-session-token`` (the seed's frontend),
``X-Session-Token``, or the cookie ``nexus_session`` (the web console: HttpOnly, SameSite=Strict,
so page scripts cannot read it and other sites cannot send it). ``Sessions.authenticate`` is the
``Service.authenticator`` behind every KAM route declared with ``auth="client"``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from nexus.auth import (
    ADMIN_SCOPE,
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_HEADERS,
    SESSION_TOKEN_PREFIX,
    CredentialRefused,
    KeyInfo,
    check_csrf,
    hash_secret,
    new_csrf_token,
    new_session_token,
    parse_session_token,
    presented_session,
    refuse_unless_open,
    session_id_or_refuse,
    session_key_info,
)
from nexus.proto import PLATFORM_TENANT, new_event
from nexus.proto.events.kam import KamSessionClosed, KamSessionOpened
from nexus.services.kam.context import CLIENT_SCOPES, KamContext
from nexus.services.kam.state import SESSION_CLOSED, SESSION_OPENED, SESSIONS_STREAM, Session, User

__all__ = [
    "ADMIN_USER_ID",
    "COOKIE",
    "SESSIONS",
    "SESSION_HEADERS",
    "TOKEN_PREFIX",
    "Account",
    "Sessions",
    "new_session_token",
    "parse_session_token",
    "rfc3339",
]

logger = logging.getLogger(__name__)

TOKEN_PREFIX = SESSION_TOKEN_PREFIX
COOKIE = SESSION_COOKIE
"""The cookie the login sets for the web console."""
ADMIN_USER_ID = "admin"
"""The user id of the bootstrap admin in sessions (client users' ids start with ``usr_``)."""


def rfc3339(seconds: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC time (how answers show ``expires_at``)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Account:
    """Who may log in: the bootstrap admin or a user of ``KamState.users``."""

    user_id: str
    username: str
    role: str
    """``admin`` or ``client``."""
    client_id: str | None
    display_name: str
    password_hash: str
    bootstrap: bool = False
    """The bootstrap admin: its password lives in stream ``admin`` (``NEXUS_ADMIN_PASSWORD``)."""

    @classmethod
    def of(cls, user: User) -> Account:
        """The account of a user of the fold."""
        return cls(
            user_id=user.user_id,
            username=user.username,
            role=user.role,
            client_id=user.client_id,
            display_name=user.display_name,
            password_hash=user.password_hash,
        )

    @property
    def scopes(self) -> tuple[str, ...]:
        """What the account's sessions may do: ``admin``, or every client scope."""
        return (ADMIN_SCOPE,) if self.role == "admin" else CLIENT_SCOPES

    @property
    def owner(self) -> str:
        """The tenant the account's sessions act for: its client, or the platform for an admin."""
        return PLATFORM_TENANT if self.role == "admin" else str(self.client_id)

    def key_info(self, session_id: str) -> KeyInfo:
        """The caller a session of this account is, as routes see it (``request[AUTH]``)."""
        return session_key_info(session_id, self.owner, self.scopes)


SESSIONS: web.AppKey[Sessions] = web.AppKey("kam_sessions")
"""``service.app[SESSIONS]``: KAM's sessions (tests set its ``clock``)."""


class Sessions:
    """Opens, closes and checks login sessions; the state is ``ctx.state.sessions``.

    Args:
        ctx: KAM's context.
        clock: Seconds since the epoch (expiry); tests move it forward.
    """

    def __init__(self, ctx: KamContext, *, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock

    @property
    def ttl(self) -> float:
        """A session's lifetime in seconds."""
        return self.ctx.settings.session_ttl_seconds

    # -- opening and closing ----------------------------------------------------------------

    async def open(self, account: Account, address: str) -> tuple[str, str, Session]:
        """Record a new session of ``account``.

        Answers (the token, the CSRF token, both shown once; the session). The event names the
        session's tenant and scopes, so every service accepts it without asking KAM.
        """
        session_id, token = new_session_token()
        csrf = new_csrf_token()
        data = KamSessionOpened(
            session_id=session_id,
            hash=hash_secret(token),
            user_id=account.user_id,
            expires_at=self.clock() + self.ttl,
            address=address,
            owner=account.owner,
            scopes=list(account.scopes),
            csrf_hash=hash_secret(csrf),
        )
        event = new_event(SESSION_OPENED, data, source=self.ctx.source, subject=session_id)
        await self.ctx.append(SESSIONS_STREAM, [event])
        return token, csrf, self.ctx.state.sessions[session_id]

    async def close(self, session_ids: list[str], reason: str) -> None:
        """Record that these sessions ended (``logout``, ``password_changed``): refused from then on."""
        if not session_ids:
            return
        events = [
            new_event(
                SESSION_CLOSED, KamSessionClosed(session_id=sid, reason=reason), source=self.ctx.source, subject=sid
            )
            for sid in session_ids
        ]
        await self.ctx.append(SESSIONS_STREAM, events)

    def open_sessions_of(self, user_id: str) -> list[str]:
        """The ids of ``user_id``'s sessions neither closed nor expired."""
        now = self.clock()
        return [
            s.session_id
            for s in self.ctx.state.sessions.values()
            if s.user_id == user_id and s.closed is None and s.expires_at > now
        ]

    # -- cookies ------------------------------------------------------------------------------

    def set_cookie(self, request: web.Request, response: web.StreamResponse, token: str, csrf: str) -> None:
        """The console's cookies: the session's (HttpOnly) and its CSRF token's (readable by the
        page, which copies it into ``X-CSRF-Token``); both SameSite=Strict, Path=/, Secure over
        https, Max-Age = the TTL."""
        max_age = math.ceil(self.ttl)  # never gone before the session is
        for name, value, httponly in ((COOKIE, token, True), (CSRF_COOKIE, csrf, False)):
            response.set_cookie(
                name, value, max_age=max_age, path="/", httponly=httponly, samesite="Strict", secure=request.secure
            )

    @staticmethod
    def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
        """Tell the browser to forget the session's cookies (logout)."""
        for name, httponly in ((COOKIE, True), (CSRF_COOKIE, False)):
            response.set_cookie(
                name, "", max_age=0, path="/", httponly=httponly, samesite="Strict", secure=request.secure
            )

    # -- checking -----------------------------------------------------------------------------

    @staticmethod
    def presented(request: web.Request) -> tuple[str, str] | None:
        """(where, token) of the session token the request carries: a header, else the cookie."""
        return presented_session(request)

    def account(self, user_id: str) -> Account | None:
        """The account a session belongs to (the bootstrap admin's is ``admin``), if it still exists."""
        if user_id == ADMIN_USER_ID:
            return Account(ADMIN_USER_ID, "", "admin", None, "Administrator", "", bootstrap=True)
        user = self.ctx.state.users.get(user_id)
        return Account.of(user) if user is not None else None

    async def _find(self, session_id: str) -> Session | None:
        session = self.ctx.state.sessions.get(session_id)
        if session is not None:
            return session
        # Perhaps opened a moment ago on another replica: fold the log up to its head, then look again.
        try:
            await self.ctx.caught_up(await self.ctx.service.log.head())
        except TimeoutError:
            logger.warning("the KAM fold lags behind the log; session %s looked up in what it has", session_id)
        return self.ctx.state.sessions.get(session_id)

    async def check(self, token: str, where: str = "the request") -> tuple[Session, Account]:
        """The session and account of a presented token.

        Raises:
            CredentialRefused: malformed, unknown, closed or expired token, or its user is gone
                (the message says which, so a client knows to log in again).
        """
        session = await self._find(session_id_or_refuse(token, where))
        refuse_unless_open(
            token,
            session.hash if session is not None else None,
            session.closed if session is not None else None,
            session.expires_at if session is not None else 0.0,
            self.clock(),
        )
        assert session is not None  # refused above otherwise
        account = self.account(session.user_id)
        if account is None:
            raise CredentialRefused("the session's user no longer exists")
        user = self.ctx.state.users.get(session.user_id)
        # A session opened before the user's last password change is refused even if its closing
        # event was lost (a crash between the change and the closes) or raced with the change.
        if user is not None and user.password_changed_at and session.opened_at < user.password_changed_at:
            raise CredentialRefused("the session was closed (password changed): log in again")
        return session, account

    async def authenticate(self, request: web.Request) -> KeyInfo | None:
        """The ``Service.authenticator``: None without a session token, the caller with a valid one."""
        presented = self.presented(request)
        if presented is None:
            return None
        where, token = presented
        session, account = await self.check(token, where)
        check_csrf(request, where, session.csrf_hash)
        return account.key_info(session.session_id)


def install(ctx: KamContext) -> Sessions:
    """Accept sessions on every KAM route declared with ``auth="client"`` or ``"any"``."""
    sessions = Sessions(ctx)
    ctx.service.authenticator(sessions.authenticate)
    ctx.service.app[SESSIONS] = sessions
    return sessions
