"""KAM's clients (the platform's tenants) and their users.

An admin creates a client (``POST /api/clients``) and its users (``POST /api/clients/{id}/users``);
a client's user sees its own client and users, never another's (404, as for one that does not
exist). Both are events in stream ``kam-accounts``; a user's password is recorded only as its
Argon2id hash. Names are unique: a second client with the same id, or a second user with the
same login name (case-insensitive, the bootstrap admin's included), is a 409.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo, hash_password, load_admin, valid_tenant
from nexus.eventlog import ConcurrencyError
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.kam import KamClientCreated, KamUserCreated
from nexus.runtime import HTTPError, Owned, json_response, read_json
from nexus.services.kam.context import KamContext
from nexus.services.kam.state import ACCOUNTS_STREAM, CLIENT_CREATED, USER_CREATED, Client, User

__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "TIERS",
    "ClientList",
    "ClientView",
    "NewClient",
    "NewUser",
    "UserList",
    "UserView",
    "append_accounts",
    "check_new_password",
    "install",
]

TIERS = ("basic", "standard", "premium")
MIN_PASSWORD = 12
"""Shortest password accepted for a user (NIST SP 800-63B asks for at least 8; we ask 12)."""
MAX_PASSWORD = 1024
"""Longest password accepted: long enough for any passphrase, short enough to bound Argon2's input."""

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,127}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}")
_ATTEMPTS = 5


class NewClient(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/clients``: a client of the AI factory."""

    client_id: str
    """The client's name, which is its tenant: 1-64 letters, digits, ``_-.``, not ``platform``."""
    name: str
    """How the client is shown (1-200 characters)."""
    contact_email: str = ""
    tier: str = "standard"
    """``basic``, ``standard`` or ``premium``."""
    monthly_budget: float | None = None
    """The agreed budget per month in ``currency`` (not negative), if any."""
    currency: str = "USD"
    """ISO 4217 code (three capital letters)."""


class ClientView(msgspec.Struct, frozen=True, kw_only=True):
    """A client as KAM shows it."""

    client_id: str
    name: str
    contact_email: str
    tier: str
    monthly_budget: float | None
    currency: str
    created_at: str
    created_by: str

    @classmethod
    def of(cls, client: Client) -> ClientView:
        return cls(
            client_id=client.client_id,
            name=client.name,
            contact_email=client.contact_email,
            tier=client.tier,
            monthly_budget=client.monthly_budget,
            currency=client.currency,
            created_at=client.created_at,
            created_by=client.created_by,
        )


class ClientList(msgspec.Struct, frozen=True, kw_only=True):
    """The clients the caller may see."""

    clients: list[ClientView]


class NewUser(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/clients/{client_id}/users``: a user of the client."""

    username: str
    """The login name (an e-mail address fits): 1-128 letters, digits, ``._@+-``; unique, case-insensitive."""
    password: str
    """At least 12 characters; only its Argon2id hash is kept."""
    display_name: str = ""


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    """A user as KAM shows it (never the password or its hash)."""

    id: str
    username: str
    role: str
    client_id: str | None
    display_name: str
    created_at: str
    password_changed_at: str

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(
            id=user.user_id,
            username=user.username,
            role=user.role,
            client_id=user.client_id,
            display_name=user.display_name,
            created_at=user.created_at,
            password_changed_at=user.password_changed_at,
        )


class UserList(msgspec.Struct, frozen=True, kw_only=True):
    """A client's users."""

    users: list[UserView]


def check_new_password(password: str, field: str = "password") -> None:
    """Raise a 400 naming ``field`` when ``password`` is too short or too long."""
    if len(password) < MIN_PASSWORD:
        raise HTTPError(400, f"{field} is too weak: use at least {MIN_PASSWORD} characters", error="weak_password")
    if len(password) > MAX_PASSWORD:
        raise HTTPError(400, f"{field} is longer than {MAX_PASSWORD} characters")


async def append_accounts(ctx: KamContext, decide: Callable[[], list[CloudEvent]]) -> list[CloudEvent]:
    """Append what ``decide()`` answers to stream ``kam-accounts``, decided on the current state.

    ``decide`` runs once the fold has every event of the stream, and the append expects the
    stream's version it saw: two admins creating the same client (or user name) at once cannot
    both succeed; the loser decides again and gets its 409. ``decide`` raises HTTPError to refuse
    and may answer ``[]`` to append nothing.
    """
    log = ctx.service.log
    for _ in range(_ATTEMPTS):
        version = await log.stream_version(ACCOUNTS_STREAM)
        await ctx.caught_up(await log.head())
        events = decide()
        if not events:
            return []
        try:
            return await ctx.append(ACCOUNTS_STREAM, events, expected_version=version)
        except ConcurrencyError:
            continue
    raise HTTPError(503, "the accounts are being changed by many callers at once; retry in a moment")


def _check_client(body: NewClient) -> None:
    if not valid_tenant(body.client_id):
        raise HTTPError(
            400,
            f"client_id {body.client_id!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter "
            "or digit (and not 'platform')",
        )
    if not body.name.strip() or len(body.name) > 200:
        raise HTTPError(400, "name: give the client's name, 1-200 characters")
    if body.tier not in TIERS:
        raise HTTPError(400, f"tier {body.tier!r}: use one of {', '.join(TIERS)}")
    if body.monthly_budget is not None and not 0 <= body.monthly_budget < 1e15:
        raise HTTPError(400, "monthly_budget: give a number from 0, or leave it out")
    if not _CURRENCY.fullmatch(body.currency):
        raise HTTPError(400, f"currency {body.currency!r}: use an ISO 4217 code such as USD or EUR")
    if body.contact_email and not _EMAIL.fullmatch(body.contact_email):
        raise HTTPError(400, f"contact_email {body.contact_email!r} is not an e-mail address")


def _check_user(body: NewUser) -> None:
    if not _USERNAME.fullmatch(body.username):
        raise HTTPError(
            400,
            f"username {body.username!r}: use 1-128 letters, digits, '.', '_', '@', '+' or '-', "
            "starting with a letter or digit",
        )
    if len(body.display_name) > 200:
        raise HTTPError(400, "display_name is longer than 200 characters")
    check_new_password(body.password)


class ClientRoutes:
    """The routes of clients and users."""

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx

    async def create_client(self, request: web.Request) -> web.Response:
        """(admin) Create a client: a tenant of the platform. 409 when the id is taken."""
        body = await read_json(request, NewClient)
        _check_client(body)
        info: KeyInfo = request[AUTH]
        state = self.ctx.state

        def decide() -> list[CloudEvent]:
            if body.client_id in state.clients:
                raise HTTPError(409, f"a client {body.client_id!r} already exists")
            data = KamClientCreated(
                client_id=body.client_id,
                name=body.name.strip(),
                contact_email=body.contact_email,
                tier=body.tier,
                monthly_budget=body.monthly_budget,
                currency=body.currency,
                created_by=self.ctx.actor(info),
            )
            event = new_event(
                CLIENT_CREATED, data, source=self.ctx.source, subject=body.client_id, tenant=body.client_id
            )
            return [event]

        await append_accounts(self.ctx, decide)
        return json_response(ClientView.of(state.clients[body.client_id]), status=201)

    async def list_clients(self, request: web.Request) -> web.Response:
        """The clients the caller may see: an admin all of them, a client its own."""
        info: KeyInfo = request[AUTH]
        clients = self.ctx.state.clients
        if info.is_admin:
            shown = sorted(clients.values(), key=lambda c: c.client_id)
        else:
            shown = [clients[info.tenant]] if info.tenant in clients else []
        return json_response(ClientList(clients=[ClientView.of(c) for c in shown]))

    async def get_client(self, request: web.Request) -> web.Response:
        """One client (its owner's users and an admin only; anybody else gets 404)."""
        return json_response(ClientView.of(self.ctx.state.clients[request.match_info["client_id"]]))

    async def create_user(self, request: web.Request) -> web.Response:
        """(admin) Create a user of the client, with role ``client``. 409 when the login name is
        taken (case-insensitive); 400 for a password under 12 characters."""
        client_id = request.match_info["client_id"]
        body = await read_json(request, NewUser)
        _check_user(body)
        info: KeyInfo = request[AUTH]
        state = self.ctx.state
        admin = await load_admin(self.ctx.service.log)
        password_hash = await asyncio.to_thread(hash_password, body.password)
        user_id = f"usr_{secrets.token_hex(8)}"

        def decide() -> list[CloudEvent]:
            taken = state.user_named(body.username) is not None
            if taken or (admin is not None and admin.user.casefold() == body.username.casefold()):
                raise HTTPError(409, f"the username {body.username!r} is taken")
            data = KamUserCreated(
                user_id=user_id,
                username=body.username,
                role="client",
                client_id=client_id,
                password_hash=password_hash,
                display_name=body.display_name.strip(),
                created_by=self.ctx.actor(info),
            )
            # No tenant on the envelope: the event holds a password hash, and a client's triggers
            # and subscribers see its tenant's events.
            return [new_event(USER_CREATED, data, source=self.ctx.source, subject=user_id)]

        await append_accounts(self.ctx, decide)
        return json_response(UserView.of(state.users[user_id]), status=201)

    async def list_users(self, request: web.Request) -> web.Response:
        """The client's users (never a password hash)."""
        client_id = request.match_info["client_id"]
        users = sorted(
            (u for u in self.ctx.state.users.values() if u.client_id == client_id), key=lambda u: u.username.casefold()
        )
        return json_response(UserList(users=[UserView.of(u) for u in users]))


def install(ctx: KamContext) -> None:
    """Add the clients' and users' routes to KAM."""
    routes = ClientRoutes(ctx)
    owned = Owned("client", "client_id", ctx.state.tenant_of_client)
    ctx.route(
        "POST",
        "/clients",
        summary="Create a client (admin)",
        request=NewClient,
        response=ClientView,
        status=201,
        tags=["clients"],
        auth="client",
        scope="admin",
        responses={400: "A field is not valid (the message names it)", 409: "A client with this id exists"},
    )(routes.create_client)
    ctx.route(
        "GET",
        "/clients",
        summary="The clients the caller may see",
        response=ClientList,
        tags=["clients"],
        auth="client",
        scope="clients:read",
    )(routes.list_clients)
    ctx.route(
        "GET",
        "/clients/{client_id}",
        summary="One client",
        response=ClientView,
        tags=["clients"],
        auth="client",
        scope="clients:read",
        owned=owned,
        responses={404: "No such client (or not the caller's)"},
    )(routes.get_client)
    ctx.route(
        "POST",
        "/clients/{client_id}/users",
        summary="Create a user of a client (admin)",
        request=NewUser,
        response=UserView,
        status=201,
        tags=["clients"],
        auth="client",
        scope="admin",
        owned=owned,
        responses={
            400: "A field is not valid, or the password is weak (under 12 characters)",
            404: "No such client",
            409: "The username is taken",
        },
    )(routes.create_user)
    ctx.route(
        "GET",
        "/clients/{client_id}/users",
        summary="A client's users",
        response=UserList,
        tags=["clients"],
        auth="client",
        scope="clients:read",
        owned=owned,
        responses={404: "No such client (or not the caller's)"},
    )(routes.list_users)
