"""Login sessions as every service sees them: the token, where it is presented, and CSRF.

KAM opens a session at login and records ``nexus.kam.session.opened`` in stream
``kam-sessions``: the token's sha256 (never the token), the tenant and scopes the session acts
with, its expiry, and the sha256 of its CSRF token. Logout and a password change append
``nexus.kam.session.closed``. Any service folds that one stream into a ``SessionView`` and
accepts the session as it accepts an API key, without asking KAM; this is how the web console,
served by KAM, reaches the workflow service and the studio through KAM's gateway with the
user's own session, never with a credential of KAM's.

The token (``sess_<16 hex id>.<43 url-safe characters>``: 256 random bits) is accepted from the
header ``x-bitware-session-token`` (seed 002's frontend), ``X-Session-Token``, or the cookie
``nexus_session`` (the console's: HttpOnly, SameSite=Strict). A browser sends a cookie by
itself, so a request that authenticates with the cookie and changes something (any method but
GET, HEAD and OPTIONS) must also carry ``X-CSRF-Token`` with the value of the readable cookie
``nexus_csrf`` set at the same login (the double-submit pattern, with the token's hash bound to
the session in the log): a page of another site can make the browser send the cookie, but it
cannot read ``nexus_csrf`` to copy it into a header. A token in a header needs no CSRF token:
no browser sends it on its own::

    sessions = SessionView(log)
    service.authenticator(sessions.authenticate)   # every route with auth="client" takes sessions
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from nexus.auth._keys import KeyInfo, hash_secret
from nexus.auth._middleware import CredentialRefused
from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.proto.events.kam import KamSessionClosed, KamSessionOpened, KamUserPasswordChanged

__all__ = [
    "ACCOUNTS_STREAM",
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SAFE_METHODS",
    "SESSIONS_STREAM",
    "SESSION_COOKIE",
    "SESSION_HEADERS",
    "SESSION_KEY_PREFIX",
    "SESSION_TOKEN_PREFIX",
    "SessionRecord",
    "SessionView",
    "check_csrf",
    "new_csrf_token",
    "new_session_token",
    "parse_session_token",
    "presented_session",
    "refuse_unless_open",
    "session_id_or_refuse",
    "session_key_info",
]

SESSIONS_STREAM = "kam-sessions"
"""The stream of ``nexus.kam.session.opened`` and ``…closed``."""
ACCOUNTS_STREAM = "kam-accounts"
"""KAM's clients and users, among them ``nexus.kam.user.password.changed``."""
SESSION_TOKEN_PREFIX = "sess_"
SESSION_HEADERS = ("x-bitware-session-token", "X-Session-Token")
"""Headers a session token may come in (case-insensitive), in the order they are looked at."""
SESSION_COOKIE = "nexus_session"
"""The HttpOnly cookie the login sets for the web console."""
CSRF_COOKIE = "nexus_csrf"
"""The readable cookie the login sets beside the session cookie; its value goes in ``CSRF_HEADER``."""
CSRF_HEADER = "X-CSRF-Token"
SESSION_KEY_PREFIX = "session:"
"""A session's caller has key id ``session:<session id>`` (audit records and ownership say so)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing, so a cookie alone may authenticate them."""

_PASSWORD_CHANGED = "nexus.kam.user.password.changed"
_OPENED = "nexus.kam.session.opened"
_CLOSED = "nexus.kam.session.closed"
_TOKEN = re.compile(r"sess_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
# Compared against when a session or its CSRF hash is unknown: the same hash and compare either way.
_NO_HASH = "0" * 64


def new_session_token() -> tuple[str, str]:
    """(session id, token): 64 random bits of id, 256 random bits of secret."""
    session_id = secrets.token_hex(8)
    return session_id, f"{SESSION_TOKEN_PREFIX}{session_id}.{secrets.token_urlsafe(32)}"


def new_csrf_token() -> str:
    """A session's CSRF token: 256 random bits, url-safe (a cookie value needs no quoting)."""
    return secrets.token_urlsafe(32)


def parse_session_token(token: str) -> str | None:
    """The session id of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def presented_session(request: web.Request) -> tuple[str, str] | None:
    """(where, token) of the session token a request carries: a header first, else the cookie.

    ``where`` names the header or ``cookie nexus_session``, for messages and for ``check_csrf``.
    """
    for header in SESSION_HEADERS:
        value = request.headers.get(header, "").strip()
        if value:
            return header, value
    cookie = request.cookies.get(SESSION_COOKIE, "").strip()
    return (f"cookie {SESSION_COOKIE}", cookie) if cookie else None


def check_csrf(request: web.Request, where: str, csrf_hash: str) -> None:
    """Refuse (403) a state-changing request authenticated by the session cookie without its CSRF token.

    Args:
        request: The request.
        where: Where the session token came from (``presented_session``'s first element).
        csrf_hash: The sha256 of the session's CSRF token, as recorded at login ("" for a
            session opened before CSRF tokens existed: its cookie cannot change anything).

    Raises:
        CredentialRefused: status 403, naming the header to send.
    """
    if not where.startswith("cookie") or request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "").strip()
    expected = csrf_hash or _NO_HASH
    if not (hmac.compare_digest(hash_secret(sent).encode(), expected.encode()) and sent and csrf_hash):
        raise CredentialRefused(
            f"a request that changes something with the session cookie needs the {CSRF_HEADER} header "
            f"with the value of the {CSRF_COOKIE} cookie (log in again if there is none)",
            status=403,
            error="csrf",
        )


def session_id_or_refuse(token: str, where: str) -> str:
    """The session id of a presented token.

    Raises:
        CredentialRefused: the token is malformed (the message names where it came from).
    """
    session_id = parse_session_token(token)
    if session_id is None:
        raise CredentialRefused(
            f"the session token in {where} is malformed: send the sess_<id>.<secret> token "
            "that POST /api/auth/login answered"
        )
    return session_id


def refuse_unless_open(
    token: str, expected_hash: str | None, closed: str | None, expires_at: float, now: float
) -> None:
    """Refuse a token whose session is unknown, another's, closed or expired.

    ``expected_hash`` is the recorded sha256 (None for an unknown session: the same hash and
    constant-time compare run anyway, so timing does not tell which).

    Raises:
        CredentialRefused: the message says why, so a client knows to log in again.
    """
    matches = hmac.compare_digest(hash_secret(token).encode(), (expected_hash or _NO_HASH).encode())
    if expected_hash is None or not matches:
        raise CredentialRefused("the session is not known: log in again with POST /api/auth/login")
    if closed is not None:
        why = "by logout" if closed == "logout" else f"({closed.replace('_', ' ')})"
        raise CredentialRefused(f"the session was closed {why}: log in again")
    if now >= expires_at:
        at = datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        raise CredentialRefused(f"the session expired at {at}: log in again")


def session_key_info(session_id: str, owner: str, scopes: tuple[str, ...]) -> KeyInfo:
    """The caller a session is, as routes see it (``request[AUTH]``)."""
    return KeyInfo(key_id=f"{SESSION_KEY_PREFIX}{session_id}", kind="client", owner=owner, scopes=scopes)


@dataclass
class SessionRecord:
    """One session as the log tells it (the token itself is never known)."""

    session_id: str
    hash: str
    user_id: str
    owner: str | None
    """The tenant it acts for (``platform`` for an admin); None for a session recorded before
    sessions named it (refused outside KAM: log in again)."""
    scopes: tuple[str, ...]
    expires_at: float
    csrf_hash: str
    closed: str | None = None
    opened_at: str = ""
    """When the login was recorded (the event's time, RFC 3339)."""


class SessionView:
    """The login sessions of the platform, folded from stream ``kam-sessions``.

    Every ``authenticate`` first reads the events appended since the last one (one indexed read
    of one stream), so a logout on any KAM replica is refused here from the next request on.

    Args:
        log: The event log.
        clock: Seconds since the epoch (expiry); tests move it.
    """

    def __init__(self, log: EventLog, *, clock: Callable[[], float] = time.time) -> None:
        self._log = log
        self._clock = clock
        self._sessions: dict[str, SessionRecord] = {}
        self._version = 0
        self._password_changed: dict[str, str] = {}
        self._accounts_version = 0
        self._lock = asyncio.Lock()

    def apply(self, event: CloudEvent) -> None:
        """Fold one event of stream ``kam-sessions`` (other types are ignored)."""
        if event.type == _OPENED:
            opened = msgspec.convert(event.data, KamSessionOpened)
            self._sessions.setdefault(
                opened.session_id,
                SessionRecord(
                    session_id=opened.session_id,
                    hash=opened.hash,
                    user_id=opened.user_id,
                    owner=opened.owner,
                    scopes=tuple(opened.scopes),
                    expires_at=opened.expires_at,
                    csrf_hash=opened.csrf_hash,
                    opened_at=event.time or "",
                ),
            )
        elif event.type == _CLOSED:
            closed = msgspec.convert(event.data, KamSessionClosed)
            record = self._sessions.get(closed.session_id)
            if record is not None and record.closed is None:
                record.closed = closed.reason
        if event.streamversion:
            self._version = max(self._version, event.streamversion)

    async def refresh(self) -> None:
        """Fold what was appended to the two streams since the last refresh (one reader at a time).

        Password changes are folded too: a session opened before its user's last change is
        refused even if the events closing it were lost (a crash between the change and the
        closes), as KAM itself refuses it.
        """
        async with self._lock:
            for event in await self._log.read_stream(SESSIONS_STREAM, self._version + 1):
                self.apply(event)
            for event in await self._log.read_stream(ACCOUNTS_STREAM, self._accounts_version + 1):
                if event.type == _PASSWORD_CHANGED:
                    changed = msgspec.convert(event.data, KamUserPasswordChanged)
                    if changed.reason != "rehashed":
                        self._password_changed[changed.user_id] = event.time or ""
                if event.streamversion:
                    self._accounts_version = max(self._accounts_version, event.streamversion)

    def get(self, session_id: str) -> SessionRecord | None:
        """The session ``session_id`` as last folded, or None."""
        return self._sessions.get(session_id)

    async def check(self, token: str, where: str = "the request") -> SessionRecord:
        """The open session a presented token belongs to.

        Raises:
            CredentialRefused: malformed, unknown, closed, expired, or recorded before sessions
                named their tenant; the message says which, so a client knows to log in again.
        """
        session_id = session_id_or_refuse(token, where)
        await self.refresh()
        record = self._sessions.get(session_id)
        refuse_unless_open(
            token,
            record.hash if record is not None else None,
            record.closed if record is not None else None,
            record.expires_at if record is not None else 0.0,
            self._clock(),
        )
        assert record is not None  # refused above otherwise
        changed = self._password_changed.get(record.user_id, "")
        if changed and record.opened_at < changed:
            raise CredentialRefused("the session was closed (password changed): log in again")
        if record.owner is None:
            raise CredentialRefused("the session was opened by an older KAM and is only good there: log in again")
        return record

    async def authenticate(self, request: web.Request) -> KeyInfo | None:
        """A ``Service.authenticator``: None without a session token, the caller with a valid one."""
        presented = presented_session(request)
        if presented is None:
            return None
        where, token = presented
        record = await self.check(token, where)
        check_csrf(request, where, record.csrf_hash)
        assert record.owner is not None  # check refused the rest
        return session_key_info(record.session_id, record.owner, record.scopes)
