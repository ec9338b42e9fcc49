"""KAM's HTTP API: decode, call, encode. Domain routes arrive with their issues."""

from __future__ import annotations

import msgspec
from aiohttp import web

from nexus.auth import KeyInfo
from nexus.runtime import Service, json_response


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who the presented API key belongs to."""

    key_id: str
    """Public id of the key."""
    kind: str
    """``client``."""
    owner: str
    """The client the key was issued to."""
    scopes: list[str] = []


def install(service: Service) -> None:
    """Add KAM's routes to ``service``."""

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
        info: KeyInfo = request["auth"]
        return json_response(Caller(key_id=info.key_id, kind=info.kind, owner=info.owner, scopes=list(info.scopes)))
