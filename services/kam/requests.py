"""KAM's requests (seed 002, phases 2-3): a client asks for work, an admin assigns a template.

``POST /api/requests`` records ``KamRequestCreated`` in the request's own stream
(``kam-request-<id>``); ``PUT /api/requests/{id}`` records either the client's edit of its own
fields (``KamRequestUpdated``, while pending) or an admin's template assignment
(``KamTemplateAssigned``, parameters checked against the template's JSON Schema with its
defaults applied). Each change is appended with the request's folded version as the expected
version, so of two concurrent edits one wins and the other gets 409: nobody overwrites a change
they have not seen. Reads answer from the fold (``KamState.requests``).

This module also installs the template routes (``templates``) and the recommender
(``recommend``), which belong to the same phase of the flow.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.eventlog import ConcurrencyError
from nexus.proto import new_event
from nexus.proto.events.kam import KamRequestCreated, KamRequestUpdated, KamTemplateAssigned
from nexus.runtime import HTTPError, Owned, json_response, read_json
from nexus.services.kam import recommend, templates
from nexus.services.kam.context import KamContext
from nexus.services.kam.state import (
    REQUEST_CREATED,
    REQUEST_UPDATED,
    STATUSES,
    TEMPLATE_ASSIGNED,
    Request,
    request_stream,
)

__all__ = [
    "ASSIGNABLE",
    "EDITABLE",
    "Assignment",
    "ClientEdit",
    "NewRequest",
    "RequestChange",
    "RequestDetail",
    "RequestList",
    "RequestSummary",
    "install",
    "request_view",
]

URGENCIES = ("low", "normal", "high", "urgent")
Urgency = Literal["low", "normal", "high", "urgent"]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Description = Annotated[str, msgspec.Meta(max_length=20_000)]
Category = Annotated[str, msgspec.Meta(max_length=64)]

ASSIGNABLE = ("pending", "template_assigned", "failed")
"""Statuses in which an admin may (re)assign a template."""
EDITABLE = ("pending",)
"""Statuses in which the client may edit its own fields."""
CLIENT_FIELDS = ("title", "description", "urgency", "category")
TEMPLATE_FIELDS = ("template_id", "template_name", "parameters")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class NewRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/requests`` (the seed's body)."""

    title: Title
    description: Description = ""
    urgency: Urgency = "normal"
    category: Category = "general"
    client_id: str | None = None
    """The client the request is for: an admin names it; a client may leave it out (it is its own)."""


class ClientEdit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT /api/requests/{id}`` by the client: any of its own fields, while the request is pending."""

    title: Title | None = None
    description: Description | None = None
    urgency: Urgency | None = None
    category: Category | None = None


class Assignment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT /api/requests/{id}`` by an admin: the seed's template assignment.

    ``template_id`` may be the template's number (``5``), its text, or its name; ``template_name``
    alone names it too. Both given must name the same template.
    """

    template_id: int | str | None = None
    template_name: str | None = None
    parameters: dict[str, Any] = {}


class RequestChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``PUT /api/requests/{id}`` as documented: an admin sends the ``Assignment``
    fields, a client the ``ClientEdit`` ones; neither may send the other's."""

    template_id: int | str | None = None
    template_name: str | None = None
    parameters: dict[str, Any] | None = None
    title: Title | None = None
    description: Description | None = None
    urgency: Urgency | None = None
    category: Category | None = None


class AssignedTemplate(msgspec.Struct, frozen=True, kw_only=True):
    """The template a request was assigned, with the parameters it will run with."""

    template_id: str
    template_name: str
    tier: str | None = None
    workflow_id: str | None = None
    stages: list[str] = []
    parameters: dict[str, Any] = {}


class RequestSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A request as listings show it."""

    request_id: str
    client_id: str
    created_by: str
    title: str
    description: str
    urgency: str
    category: str
    status: str
    """``pending``, ``template_assigned``, ``executing``, ``completed`` or ``failed``."""
    template: AssignedTemplate | None
    execution_id: str | None
    attempts: int
    error: str | None
    metrics: dict[str, Any]
    """``total_time_ms``, ``stages_completed``, ``tokens_used``, ``estimated_cost`` once it ran."""
    deliverable_ids: list[str]
    created_at: str
    updated_at: str
    version: int
    """The request's version (also its ``ETag``): every change increases it."""


class RequestDetail(RequestSummary, frozen=True, kw_only=True):
    """One request with its history."""

    history: list[dict[str, Any]]
    """Each status it went through: ``{status, at, event_id}``."""


class RequestList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/requests``: newest first."""

    requests: list[RequestSummary]
    next_cursor: str | None = None
    """Pass it as ``cursor`` for the next page; None on the last page."""


def request_view(ctx: KamContext, request: Request, *, history: bool = True) -> dict[str, Any]:
    """The API's document of ``request`` (``RequestDetail``, or ``RequestSummary`` without history)."""
    template: dict[str, Any] | None = None
    if request.template_id is not None:
        known = ctx.state.templates.get(request.template_id) or {}
        template = {
            "template_id": request.template_id,
            "template_name": request.template_name or "",
            "tier": known.get("tier"),
            "workflow_id": known.get("workflow_id"),
            "stages": list(known.get("stages") or []),
            "parameters": request.parameters,
        }
    view: dict[str, Any] = {
        "request_id": request.request_id,
        "client_id": request.client_id,
        "created_by": request.created_by,
        "title": request.title,
        "description": request.description,
        "urgency": request.urgency,
        "category": request.category,
        "status": request.status,
        "template": template,
        "execution_id": request.execution_id,
        "attempts": request.attempts,
        "error": request.error,
        "metrics": request.metrics,
        "deliverable_ids": list(request.deliverable_ids),
        "created_at": request.created_at,
        "updated_at": request.updated_at,
        "version": request.version,
    }
    if history:
        view["history"] = list(request.history)
    return view


def _etag(request: Request) -> dict[str, str]:
    return {"ETag": f'"{request.version}"'}


def _encode_cursor(ordinal: int) -> str:
    return base64.urlsafe_b64encode(f"r1:{ordinal}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    """The ordinal a cursor stands for. Ordinals count the caller's own requests from the oldest,
    and requests are never deleted, so a page stays stable while new requests arrive."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "r1":
            raise ValueError(prefix)
        return int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HTTPError(400, "cursor: not a cursor this API gave (pass next_cursor as it came)") from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise HTTPError(400, f"limit: {raw[:40]!r} is not a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise HTTPError(400, f"limit: {limit} is outside 1..{MAX_LIMIT}")
    return limit


def _choice(query: Any, name: str, allowed: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in allowed:
        raise HTTPError(400, f"{name}: {value[:40]!r} is not one of {', '.join(allowed)}")
    return value if isinstance(value, str) else None


async def _append(ctx: KamContext, request: Request, seen: int, event_type: str, data: msgspec.Struct) -> Request:
    """Append one change of ``request`` decided at version ``seen``; 409 when someone changed it since.

    ``seen`` is the version read when the call began (the fold's ``Request`` is live and moves on
    while the handler awaits, so its current version would let a stale decision through)."""
    event = new_event(event_type, data, source=ctx.source, subject=request.request_id, tenant=request.client_id)
    try:
        await ctx.append(request_stream(request.request_id), [event], expected_version=seen)
    except ConcurrencyError:
        raise HTTPError(
            409, f"request {request.request_id} was changed meanwhile (version {seen} is stale); reload it"
        ) from None
    return ctx.state.requests[request.request_id]


def _decode(body: dict[str, Any], type_: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.convert(body, type_)
    except msgspec.ValidationError as exc:
        message = f"the request body does not match the expected schema: {exc}"
        raise HTTPError(400, message, error="invalid_body") from None


async def _assign(ctx: KamContext, request: Request, seen: int, info: KeyInfo, body: dict[str, Any]) -> Request:
    assignment: Assignment = _decode(body, Assignment)
    if request.status not in ASSIGNABLE:
        raise HTTPError(
            409,
            f"request {request.request_id} is {request.status}: a template is assigned while it is "
            f"{', '.join(ASSIGNABLE)}",
        )
    try:
        template = templates.find_template(ctx.state, assignment.template_id, assignment.template_name)
        schema = template.get("parameters") or {"type": "object"}
        parameters = templates.apply_parameters(schema, assignment.parameters)
    except templates.TemplateError as exc:
        raise HTTPError(400, str(exc)) from None
    data = KamTemplateAssigned(
        request_id=request.request_id,
        template_id=str(template["id"]),
        template_name=str(template["name"]),
        parameters=parameters,
        assigned_by=ctx.actor(info),
    )
    return await _append(ctx, request, seen, TEMPLATE_ASSIGNED, data)


async def _edit(ctx: KamContext, request: Request, seen: int, info: KeyInfo, body: dict[str, Any]) -> Request:
    named = sorted(k for k in body if k in TEMPLATE_FIELDS)
    if named:
        raise HTTPError(403, f"only an admin assigns a template ({', '.join(named)})")
    edit: ClientEdit = _decode(body, ClientEdit)
    if request.status not in EDITABLE:
        raise HTTPError(409, f"request {request.request_id} is {request.status}: it can be edited while pending")
    if edit.title is not None and not edit.title.strip():
        raise HTTPError(400, "title: must not be blank")
    wanted = {name: getattr(edit, name) for name in CLIENT_FIELDS if getattr(edit, name) is not None}
    if "title" in wanted:
        wanted["title"] = wanted["title"].strip()
    changes = {name: value for name, value in wanted.items() if value != getattr(request, name)}
    if not changes:
        return request
    data = KamRequestUpdated(request_id=request.request_id, changes=changes, updated_by=ctx.actor(info))
    return await _append(ctx, request, seen, REQUEST_UPDATED, data)


def install(ctx: KamContext) -> None:
    """Add the request routes, the template routes and the recommender to KAM."""
    templates.install(ctx)
    recommend.install(ctx)
    owned = Owned("request", "request_id", ctx.state.tenant_of_request)

    @ctx.route(
        "POST",
        "/requests",
        summary="Create a request (a client for itself; an admin names client_id)",
        request=NewRequest,
        response=RequestDetail,
        status=201,
        auth="client",
        scope="requests:write",
        tags=["requests"],
        responses={
            400: "Bad body (the message names the field), or an admin named no known client",
            403: "A client named another client, or the credential lacks requests:write",
        },
    )
    async def create_request(request: web.Request) -> web.Response:
        """Records ``KamRequestCreated`` in stream ``kam-request-<id>``; the request is ``pending``."""
        info: KeyInfo = request[AUTH]
        body = await read_json(request, NewRequest)
        if not body.title.strip():
            raise HTTPError(400, "title: must not be blank")
        if info.is_admin:
            if not body.client_id:
                raise HTTPError(400, "client_id: an admin creates a request for a client; name the client")
            if body.client_id not in ctx.state.clients:
                raise HTTPError(400, f"client_id: no client {body.client_id!r}")
            client_id = body.client_id
        else:
            if body.client_id is not None and body.client_id != info.tenant:
                raise HTTPError(403, "client_id: a client creates requests for itself only")
            client_id = info.tenant
        request_id = f"req_{secrets.token_hex(12)}"
        data = KamRequestCreated(
            request_id=request_id,
            client_id=client_id,
            created_by=ctx.actor(info),
            title=body.title.strip(),
            description=body.description,
            urgency=body.urgency,
            category=body.category,
        )
        event = new_event(REQUEST_CREATED, data, source=ctx.source, subject=request_id, tenant=client_id)
        await ctx.append(request_stream(request_id), [event], expected_version=0)
        created = ctx.state.requests[request_id]
        return json_response(request_view(ctx, created), status=201, headers=_etag(created))

    @ctx.route(
        "GET",
        "/requests",
        summary="List requests, newest first (a client's own; an admin's all)",
        response=RequestList,
        auth="client",
        scope="requests:read",
        tags=["requests"],
        query={
            "status": "pending, template_assigned, executing, completed or failed",
            "category": "the request's category",
            "urgency": "low, normal, high or urgent",
            "client_id": "one client's requests (admins)",
            "q": "words found in the title or description (case-insensitive)",
            "limit": f"requests per page, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})",
            "cursor": "next_cursor of the previous page",
        },
        responses={400: "A filter, limit or cursor is not valid (the message names it)"},
    )
    async def list_requests(request: web.Request) -> web.Response:
        """Filters combine; ``q`` matches every word given. A client's ``client_id`` can only be its
        own (another one lists nothing)."""
        info: KeyInfo = request[AUTH]
        query = request.query
        status = _choice(query, "status", STATUSES)
        urgency = _choice(query, "urgency", URGENCIES)
        category = query.get("category")
        client_id = query.get("client_id")
        words = (query.get("q") or "").casefold().split()
        limit = _limit(query.get("limit"))
        before = _decode_cursor(query["cursor"]) if "cursor" in query else None
        visible = [r for r in ctx.state.requests.values() if info.is_admin or r.client_id == info.tenant]
        page: list[dict[str, Any]] = []
        next_cursor: str | None = None
        for ordinal in range(len(visible) - 1, -1, -1):
            if before is not None and ordinal >= before:
                continue
            item = visible[ordinal]
            if (
                (status is not None and item.status != status)
                or (urgency is not None and item.urgency != urgency)
                or (category is not None and item.category != category)
                or (client_id is not None and item.client_id != client_id)
            ):
                continue
            if words:
                text = f"{item.title}\n{item.description}".casefold()
                if not all(word in text for word in words):
                    continue
            if len(page) == limit:
                next_cursor = _encode_cursor(ordinal + 1)
                break
            page.append(request_view(ctx, item, history=False))
        return json_response({"requests": page, "next_cursor": next_cursor})

    @ctx.route(
        "GET",
        "/requests/{request_id}",
        summary="One request: its fields, status history, template, execution, metrics and deliverables",
        response=RequestDetail,
        auth="client",
        scope="requests:read",
        owned=owned,
        tags=["requests"],
        responses={404: "No such request, or another client's"},
    )
    async def get_request(request: web.Request) -> web.Response:
        """The ``ETag`` header is the request's version (send it back as ``If-Match`` with a change)."""
        found = ctx.state.requests[request.match_info["request_id"]]
        return json_response(request_view(ctx, found), headers=_etag(found))

    @ctx.route(
        "PUT",
        "/requests/{request_id}",
        summary="Assign a template (admin) or edit the request's own fields (its client, while pending)",
        request=RequestChange,
        response=RequestDetail,
        auth="client",
        scope="requests:write",
        owned=owned,
        tags=["requests"],
        responses={
            400: "Unknown field, bad value, unknown template, or parameters the template's schema refuses",
            403: "A client sent template fields",
            404: "No such request, or another client's",
            409: "The request's status does not allow the change, or it changed meanwhile",
            412: "If-Match is not the request's current version",
        },
    )
    async def put_request(request: web.Request) -> web.Response:
        """An admin's body is ``{template_id, template_name, parameters}`` (allowed while pending,
        template_assigned or failed); a client's is any of ``title``, ``description``, ``urgency``,
        ``category`` (while pending), and only the fields that changed are recorded. ``If-Match``
        (optional) must be the current ``ETag``."""
        info: KeyInfo = request[AUTH]
        found = ctx.state.requests[request.match_info["request_id"]]
        # What the caller decides on is this version: a change folded while we await makes it stale.
        seen = found.version
        expected = request.headers.get("If-Match")
        if expected is not None and expected.strip().strip('"') != str(seen):
            raise HTTPError(412, f"If-Match {expected[:40]!r}: the request is at version {seen}")
        body = await read_json(request, dict[str, Any])
        if found.version != seen:
            raise HTTPError(
                409, f"request {found.request_id} was changed meanwhile (version {seen} is stale); reload it"
            )
        if info.is_admin:
            updated = await _assign(ctx, found, seen, info, body)
        else:
            updated = await _edit(ctx, found, seen, info, body)
        return json_response(request_view(ctx, updated), headers=_etag(updated))
