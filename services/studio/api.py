"""Studio's HTTP API: decode, call, encode. Domain routes arrive with their issues."""

from __future__ import annotations

import msgspec
from aiohttp import web

from nexus.raw import RawKeyError
from nexus.runtime import HTTPError, Service, json_response


class BlobPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of stored blob keys."""

    keys: list[str]
    """Keys in lexicographic order."""
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; absent on the last one."""


def install(service: Service) -> None:
    """Add Studio's routes to ``service``."""

    @service.route(
        "GET",
        "/v1/blobs",
        summary="List stored blob keys",
        responses={400: "Malformed prefix or cursor"},
        response=BlobPage,
        tags=["blobs"],
        auth="client",
        query={"prefix": "Only keys starting with this", "cursor": "From a previous page's next_cursor"},
    )
    async def list_blobs(request: web.Request) -> web.Response:
        """Lists the keys of the blobs in Raw, a page of at most 1000 at a time."""
        try:
            page = await service.raw.list(request.query.get("prefix", ""), request.query.get("cursor") or None)
        except RawKeyError as exc:
            raise HTTPError(400, str(exc), error="invalid_query") from None
        return json_response(BlobPage(keys=page.keys, next_cursor=page.cursor))
