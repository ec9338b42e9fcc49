"""Studio's HTTP API: decode, call, encode. Domain routes arrive with their issues."""

from __future__ import annotations

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.raw import RawKeyError, check_key, check_prefix, tenant_prefix
from nexus.runtime import HTTPError, Service, json_response


class BlobPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of stored blob keys."""

    keys: list[str]
    """Keys in lexicographic order, relative to the caller's namespace (``t/<tenant>/``);
    an admin key sees every key in full."""
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; absent on the last one."""


def install(service: Service) -> None:
    """Add Studio's routes to ``service``."""

    @service.route(
        "GET",
        "/v1/blobs",
        summary="List the caller's blob keys",
        responses={400: "Malformed prefix or cursor (absolute, '..', control characters, too long)"},
        response=BlobPage,
        tags=["blobs"],
        auth="client",
        query={
            "prefix": "Only keys starting with this (relative to the caller's namespace)",
            "cursor": "From a previous page's next_cursor",
        },
    )
    async def list_blobs(request: web.Request) -> web.Response:
        """Lists the keys of the caller's blobs in Raw (its tenant's namespace ``t/<tenant>/``), a
        page of at most 1000 at a time; an admin key lists every key."""
        info: KeyInfo = request[AUTH]
        prefix = request.query.get("prefix", "")
        cursor = request.query.get("cursor") or None
        try:
            check_prefix(prefix)
            if cursor is not None:
                check_key(cursor)
        except RawKeyError as exc:
            raise HTTPError(400, str(exc), error="invalid_query") from None
        namespace = "" if info.is_admin else tenant_prefix(info.tenant)
        try:
            page = await service.raw.list(namespace + prefix, namespace + cursor if cursor else None)
        except RawKeyError as exc:
            raise HTTPError(400, str(exc), error="invalid_query") from None
        # Keys are shown relative to the namespace: a client never learns where the others' are.
        keys = [key[len(namespace) :] for key in page.keys]
        next_cursor = page.cursor[len(namespace) :] if page.cursor else None
        return json_response(BlobPage(keys=keys, next_cursor=next_cursor))
