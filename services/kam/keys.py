"""API keys issued through KAM: for a client's programs, scoped, shown once, revocable.

``POST /api/clients/{id}/keys`` issues a key with ``nexus.auth.issue_key``: the same
``nexus.platform.key.issued`` event (hash only, stream ``keys``) that ``nexus keys create``
writes, so every service accepts the key and ``nexus keys`` lists and revokes it as before. The
key holds the scopes asked for (a subset of the client scopes; all of them by default), and a
route declared with a scope the key lacks answers 403. KAM records what it adds (the key's name,
who issued it) as ``nexus.kam.key.issued`` in stream ``kam-accounts``.

Who manages a client's keys: an admin, and a signed-in user of that client (the console's keys
page), for its own client only (another client's is 404, as for one that does not exist) and
with scopes at most its session's (the client scopes: never ``admin``). An API key never issues
or revokes keys, whatever its scopes: a leaked key must not mint more keys (nor revoke the
client's others), so these routes need a person's session. A dedicated scope would not do it:
a key made by ``nexus keys create`` without scopes passes every client scope.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo, KeyRecord, issue_key, revoke_key
from nexus.proto import new_event
from nexus.proto.events.kam import KamKeyIssued
from nexus.runtime import HTTPError, Owned, json_response, read_json
from nexus.services.kam.context import CLIENT_SCOPES, SESSION_KEY_PREFIX, KamContext
from nexus.services.kam.state import ACCOUNTS_STREAM, KEY_ISSUED

__all__ = ["IssuedKeyAnswer", "KeyList", "KeyView", "NewKey", "install"]


class NewKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/clients/{client_id}/keys``."""

    scopes: list[str] | None = None
    """What the key may do, a subset of the client scopes; left out: all of them."""
    name: str = ""
    """What the key is for (``nightly export``), up to 100 characters."""


class KeyView(msgspec.Struct, frozen=True, kw_only=True):
    """An API key of a client (never its secret)."""

    key_id: str
    client_id: str
    name: str
    scopes: list[str]
    """Empty for a key issued without scopes (by ``nexus keys create``): it passes every client scope."""
    revoked: bool
    issued_at: str
    issued_by: str
    revoked_at: str | None = None


class IssuedKeyAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A new key: ``secret`` is shown here once and never again."""

    key_id: str
    client_id: str
    name: str
    scopes: list[str]
    secret: str
    """Send it as ``X-API-Key``; KAM keeps only its hash."""


class KeyList(msgspec.Struct, frozen=True, kw_only=True):
    """A client's API keys, oldest first."""

    keys: list[KeyView]


class KeyRoutes:
    """The routes of a client's API keys."""

    def __init__(self, ctx: KamContext) -> None:
        self.ctx = ctx

    def _view(self, record: KeyRecord) -> KeyView:
        kam = self.ctx.state.keys.get(record.info.key_id)
        return KeyView(
            key_id=record.info.key_id,
            client_id=record.info.owner,
            name=kam.name if kam else "",
            scopes=list(record.info.scopes),
            revoked=record.revoked_by is not None,
            issued_at=record.issued_by.time or "",
            issued_by=kam.issued_by if kam else "",
            revoked_at=record.revoked_by.time if record.revoked_by is not None else None,
        )

    def _manager(self, info: KeyInfo) -> None:
        """Refuse (403) a caller who may not issue or revoke keys: anyone but an admin or a
        signed-in user (the owner check has already answered 404 for another client's user)."""
        if info.is_admin:
            return
        session_id = info.key_id.removeprefix(SESSION_KEY_PREFIX)
        if not info.key_id.startswith(SESSION_KEY_PREFIX) or session_id not in self.ctx.state.sessions:
            raise HTTPError(
                403,
                "an API key cannot issue or revoke keys: sign in as a user of the client (or ask an admin)",
                error="forbidden",
            )

    async def _record(self, client_id: str, key_id: str) -> KeyRecord:
        keys = self.ctx.service.keys
        await keys.refresh()
        record = keys.record(key_id)
        if record is None or record.info.kind != "client" or record.info.owner != client_id:
            raise HTTPError(404, f"no key {key_id!r} of client {client_id!r}")
        return record

    async def create(self, request: web.Request) -> web.Response:
        """Issue an API key to the client (an admin, or a signed-in user of it), with the scopes
        asked for (default: every scope the issuer may give). The secret is in this answer only."""
        client_id = request.match_info["client_id"]
        info: KeyInfo = request[AUTH]
        self._manager(info)
        body = await read_json(request, NewKey)
        # An admin gives any client scope; a user, at most what its own session holds.
        allowed = CLIENT_SCOPES if info.is_admin else tuple(s for s in CLIENT_SCOPES if s in info.scopes)
        scopes = list(allowed) if body.scopes is None else list(dict.fromkeys(body.scopes))
        unknown = [s for s in scopes if s not in allowed]
        if unknown:
            raise HTTPError(400, f"scopes {unknown}: a client key may hold only {', '.join(allowed)}")
        if not scopes:
            raise HTTPError(400, "scopes is empty: name at least one, or leave it out for all of them")
        if len(body.name) > 100:
            raise HTTPError(400, "name is longer than 100 characters")
        issued = await issue_key(
            self.ctx.service.log, "client", client_id, scopes=tuple(scopes), source=self.ctx.source
        )
        data = KamKeyIssued(
            key_id=issued.info.key_id,
            client_id=client_id,
            name=body.name.strip(),
            scopes=scopes,
            issued_by=self.ctx.actor(info),
        )
        event = new_event(KEY_ISSUED, data, source=self.ctx.source, subject=issued.info.key_id, tenant=client_id)
        await self.ctx.append(ACCOUNTS_STREAM, [event])
        answer = IssuedKeyAnswer(
            key_id=issued.info.key_id, client_id=client_id, name=data.name, scopes=scopes, secret=issued.secret
        )
        return json_response(answer, status=201)

    async def list(self, request: web.Request) -> web.Response:
        """The client's API keys, revoked ones included (never a secret): those issued here and
        those made with ``nexus keys create``."""
        client_id = request.match_info["client_id"]
        keys = self.ctx.service.keys
        await keys.refresh()
        records = [r for r in keys.records() if r.info.kind == "client" and r.info.owner == client_id]
        return json_response(KeyList(keys=[self._view(r) for r in records]))

    async def revoke(self, request: web.Request) -> web.Response:
        """Revoke one of the client's keys (an admin, or a signed-in user of it): every service
        refuses it from then on. 404 for a key of another client, as for one that does not exist."""
        client_id, key_id = request.match_info["client_id"], request.match_info["key_id"]
        info: KeyInfo = request[AUTH]
        self._manager(info)
        await self._record(client_id, key_id)
        await revoke_key(
            self.ctx.service.log,
            key_id,
            reason=f"revoked through KAM by {self.ctx.actor(info)}",
            source=self.ctx.source,
        )
        return json_response(self._view(await self._record(client_id, key_id)))


def install(ctx: KamContext) -> None:
    """Add the API keys' routes to KAM."""
    routes = KeyRoutes(ctx)
    owned = Owned("client", "client_id", ctx.state.tenant_of_client)
    ctx.route(
        "POST",
        "/clients/{client_id}/keys",
        summary="Issue an API key to a client (an admin, or a signed-in user of it); the secret is shown once",
        request=NewKey,
        response=IssuedKeyAnswer,
        status=201,
        tags=["keys"],
        auth="client",
        owned=owned,
        responses={
            400: "An unknown scope, one the issuer does not hold, an empty list, or a name too long",
            403: "An API key (keys are issued by a signed-in user or an admin)",
            404: "No such client (or not the caller's)",
        },
    )(routes.create)
    ctx.route(
        "GET",
        "/clients/{client_id}/keys",
        summary="A client's API keys (never their secrets)",
        response=KeyList,
        tags=["keys"],
        auth="client",
        scope="clients:read",
        owned=owned,
        responses={404: "No such client (or not the caller's)"},
    )(routes.list)
    ctx.route(
        "DELETE",
        "/clients/{client_id}/keys/{key_id}",
        summary="Revoke a client's API key (an admin, or a signed-in user of it)",
        response=KeyView,
        tags=["keys"],
        auth="client",
        owned=owned,
        responses={
            403: "An API key (keys are revoked by a signed-in user or an admin)",
            404: "No such client (or not the caller's), or no such key of this client",
        },
    )(routes.revoke)
