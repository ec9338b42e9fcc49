"""The studio's providers: seed 004's provider documents, their registration and their triggers' conditions.

A provider says which workflows run when a blob is created, updated or deleted (seed 004,
"Provider-Workflow Mapping")::

    provider: {id: book-writer, name: Book Writing Assistant, type: hybrid}
    workflows:
      - workflow_id: book_chapter_expansion
        triggers:
          - event: onCreate
            conditions: [{field: metadata.type, operator: eq, value: chapter}]
        priority: 10

A client registers providers for its own blobs (``POST /providers``, YAML or JSON); an admin
registers them for the platform, and a platform provider reacts to every tenant's blobs. The
bundled providers (``bundled/providers/*.yaml`` beside this module, ``book-writer`` among them)
are registered for the platform at start, only when new or changed since their last bundled
registration, so a restart appends nothing. Registrations are events on ``studio-providers``
(the fold keeps the latest per owner and id).

A condition's ``field`` is a dotted path into the blob's document as triggers see it
(``trigger_document``: ``metadata.*``, ``content_type``, ``size``, ``version``, ``owner``,
``parent_id``...); the operators are ``eq, ne, in, exists, gt, lt, contains``. A missing field
fails every operator but ``ne`` and ``exists: false``; ``gt``/``lt`` compare numbers with
numbers and strings with strings only, so a condition never raises on a blob's data.

``install`` also installs the modules the providers drive: ``triggers`` (blob events start the
providers' workflows; ``POST /providers/trigger``), ``transformer`` (a run's output becomes
changes on its blob; ``/providers/rollback``, ``/deltas/generate``), ``lineage`` and
``consistency``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, PLATFORM_TENANT, KeyInfo
from nexus.eventlog import ConcurrencyError, EventLog
from nexus.proto import new_event
from nexus.proto.events.studio import ProviderRegistered, ProviderRemoved
from nexus.runtime import HTTPError, json_response
from nexus.services.studio.context import StudioContext
from nexus.services.studio.state import (
    PROVIDER_REGISTERED,
    PROVIDER_REMOVED,
    PROVIDERS_STREAM,
    Blob,
    Provider,
    StudioState,
)
from nexus.yamlsafe import InvalidYAMLError, UnsafeYAMLError, load_yaml

__all__ = [
    "BUNDLED_PROVIDERS",
    "EVENTS",
    "OPERATORS",
    "ProviderError",
    "ProviderView",
    "TriggeredList",
    "TriggeredRunView",
    "install",
    "matches",
    "parse_provider",
    "register_bundled",
    "trigger_document",
    "triggered",
    "visible_providers",
]

logger = logging.getLogger("nexus.studio.providers")

BUNDLED_PROVIDERS = Path(__file__).parent / "bundled" / "providers"

OPERATORS = ("eq", "ne", "in", "exists", "gt", "lt", "contains")
EVENTS = ("onCreate", "onUpdate", "onDelete")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAX_WORKFLOWS = 16
_MAX_TRIGGERS = 16
_MAX_CONDITIONS = 16
_MAX_FIELD_DEPTH = 8
_MAX_PROVIDERS_PER_OWNER = 100
_TOP_FIELDS = {"provider", "workflows"}
_PROVIDER_FIELDS = {"id", "name", "type", "description"}
_WORKFLOW_FIELDS = {"workflow_id", "triggers", "priority"}
_TRIGGER_FIELDS = {"event", "conditions"}
_CONDITION_FIELDS = {"field", "operator", "value"}


class ProviderError(ValueError):
    """A provider document is refused; ``field`` names where (``workflows[0].triggers[1].event``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _unknown(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(str(k) for k in doc if k not in allowed)
    if extra:
        raise ProviderError(f"{where}.{extra[0]}" if where else extra[0], f"unknown field (allowed: {sorted(allowed)})")


def _string(doc: Mapping[str, Any], name: str, where: str, *, required: bool = True, pattern: bool = False) -> str:
    value = doc.get(name)
    path = f"{where}.{name}" if where else name
    if value is None:
        if required:
            raise ProviderError(path, "is required")
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ProviderError(path, "must be a non-empty string")
    if len(value) > 256:
        raise ProviderError(path, "is longer than 256 characters")
    if pattern and not _ID.match(value):
        raise ProviderError(path, f"{value!r} is not an id (letters, digits, '.', '_', ':', '-'; at most 128)")
    return value


def _list(doc: Mapping[str, Any], name: str, where: str, limit: int, *, required: bool) -> list[Any]:
    value = doc.get(name)
    path = f"{where}.{name}" if where else name
    if value is None:
        if required:
            raise ProviderError(path, "is required")
        return []
    if not isinstance(value, list):
        raise ProviderError(path, "must be a list")
    if required and not value:
        raise ProviderError(path, "must not be empty")
    if len(value) > limit:
        raise ProviderError(path, f"has {len(value)} entries; at most {limit}")
    return value


def _condition(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, Mapping):
        raise ProviderError(where, "must be a mapping {field, operator, value}")
    _unknown(doc, _CONDITION_FIELDS, where)
    field = _string(doc, "field", where)
    if len(field.split(".")) > _MAX_FIELD_DEPTH or any(not part for part in field.split(".")):
        raise ProviderError(f"{where}.field", f"{field!r} is not a dotted path of at most {_MAX_FIELD_DEPTH} names")
    operator = _string(doc, "operator", where)
    if operator not in OPERATORS:
        raise ProviderError(f"{where}.operator", f"{operator!r} is not one of {list(OPERATORS)}")
    if "value" not in doc and operator != "exists":
        raise ProviderError(f"{where}.value", f"is required for operator {operator!r}")
    value = doc.get("value", True)
    if operator == "in" and not isinstance(value, list):
        raise ProviderError(f"{where}.value", "must be a list for operator 'in'")
    if operator == "exists" and not isinstance(value, bool):
        raise ProviderError(f"{where}.value", "must be true or false for operator 'exists'")
    if operator in ("gt", "lt") and (isinstance(value, bool) or not isinstance(value, int | float | str)):
        raise ProviderError(f"{where}.value", f"must be a number or a string for operator {operator!r}")
    return {"field": field, "operator": operator, "value": value}


def parse_provider(document: Any) -> dict[str, Any]:
    """The provider document, checked and normalised (defaults filled in: ``conditions: []``,
    ``priority: 50``), in seed 004's shape.

    Raises:
        ProviderError: the document is refused; the field is named.
    """
    if not isinstance(document, Mapping):
        raise ProviderError("$", "a provider is a mapping with 'provider' and 'workflows'")
    _unknown(document, _TOP_FIELDS, "")
    head = document.get("provider")
    if not isinstance(head, Mapping):
        raise ProviderError("provider", "is required: a mapping {id, name, type}")
    _unknown(head, _PROVIDER_FIELDS, "provider")
    provider = {
        "id": _string(head, "id", "provider", pattern=True),
        "name": _string(head, "name", "provider"),
        "type": _string(head, "type", "provider"),
    }
    if head.get("description") is not None:
        provider["description"] = _string(head, "description", "provider")
    workflows = []
    for w, item in enumerate(_list(document, "workflows", "", _MAX_WORKFLOWS, required=True)):
        where = f"workflows[{w}]"
        if not isinstance(item, Mapping):
            raise ProviderError(where, "must be a mapping {workflow_id, triggers, priority}")
        _unknown(item, _WORKFLOW_FIELDS, where)
        priority = item.get("priority", 50)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise ProviderError(f"{where}.priority", "must be an integer from 0 to 100")
        triggers = []
        for t, trig in enumerate(_list(item, "triggers", where, _MAX_TRIGGERS, required=True)):
            twhere = f"{where}.triggers[{t}]"
            if not isinstance(trig, Mapping):
                raise ProviderError(twhere, "must be a mapping {event, conditions}")
            _unknown(trig, _TRIGGER_FIELDS, twhere)
            event = _string(trig, "event", twhere)
            if event not in EVENTS:
                raise ProviderError(f"{twhere}.event", f"{event!r} is not one of {list(EVENTS)}")
            conditions = [
                _condition(c, f"{twhere}.conditions[{i}]")
                for i, c in enumerate(_list(trig, "conditions", twhere, _MAX_CONDITIONS, required=False))
            ]
            triggers.append({"event": event, "conditions": conditions})
        workflows.append(
            {
                "workflow_id": _string(item, "workflow_id", where, pattern=True),
                "triggers": triggers,
                "priority": priority,
            }
        )
    return {"provider": provider, "workflows": workflows}


# -- conditions -------------------------------------------------------------------------------

_MISSING = object()


def trigger_document(blob: Blob) -> dict[str, Any]:
    """What a condition's ``field`` reads of a blob: its current version's description."""
    current = blob.current
    return {
        "id": blob.blob_id,
        "owner": blob.owner,
        "version": blob.version,
        "content_type": current.content_type,
        "size": current.size,
        "sha256": current.sha256,
        "metadata": current.metadata,
        "parent_id": blob.parent_id,
        "deleted": blob.deleted,
    }


def _lookup(document: Any, path: str) -> Any:
    value = document
    for name in path.split("."):
        if isinstance(value, Mapping) and name in value:
            value = value[name]
        elif isinstance(value, list) and name.isdigit() and int(name) < len(value):
            value = value[int(name)]
        else:
            return _MISSING
    return value


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (isinstance(a, str) and isinstance(b, str))


def _holds(condition: Mapping[str, Any], document: Any) -> bool:
    value = _lookup(document, str(condition["field"]))
    operator = condition["operator"]
    expected = condition.get("value")
    if operator == "exists":
        return (value is not _MISSING and value is not None) == bool(expected)
    if value is _MISSING:
        return bool(operator == "ne")
    if operator == "eq":
        return bool(value == expected)
    if operator == "ne":
        return bool(value != expected)
    if operator == "in":
        return isinstance(expected, list) and bool(value in expected)
    if operator == "contains":
        if isinstance(value, str):
            return isinstance(expected, str) and expected in value
        if isinstance(value, list | dict):
            return bool(expected in value)
        return False
    if operator in ("gt", "lt") and _comparable(value, expected):
        return bool(value > expected) if operator == "gt" else bool(value < expected)
    return False


def matches(conditions: list[Mapping[str, Any]], document: Any) -> bool:
    """True when every condition holds of ``document`` (no conditions: always)."""
    return all(_holds(c, document) for c in conditions)


def visible_providers(providers: Mapping[tuple[str, str], Provider], tenant: str) -> list[Provider]:
    """The providers reacting to ``tenant``'s blobs: the tenant's own and the platform's."""
    return [p for (owner, _), p in providers.items() if owner in (tenant, PLATFORM_TENANT)]


# -- registration -----------------------------------------------------------------------------


def _canonical(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def read_directory(directory: Path) -> list[dict[str, Any]]:
    """The provider documents of ``directory`` (``*.yaml``, ``*.yml``, ``*.json``), checked.

    Raises:
        ProviderError: a file is refused (its name leads the field).
    """
    documents: list[dict[str, Any]] = []
    if not directory.is_dir():
        return documents
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yaml", ".yml", ".json"):
            continue
        try:
            documents.append(parse_provider(load_yaml(path.read_bytes(), what="provider")))
        except ProviderError as exc:
            raise ProviderError(f"{path.name}:{exc.field}", exc.message) from None
        except (InvalidYAMLError, UnsafeYAMLError) as exc:
            raise ProviderError(path.name, str(exc)) from None
    return documents


def _registration(document: dict[str, Any], owner: str, by: str, source: str) -> Any:
    return new_event(
        PROVIDER_REGISTERED,
        ProviderRegistered(provider=document, owner=owner, registered_by=by),
        source=source,
        subject=str(document["provider"]["id"]),
        tenant=owner,
    )


async def register_bundled(
    log: EventLog, directory: Path = BUNDLED_PROVIDERS, source: str = "nexus/studio"
) -> list[str]:
    """Register the platform providers of ``directory`` that are new or changed since their last
    bundled registration (at start, before the fold loads; replicas starting together are
    ordered by the stream's version). Returns the ids registered now."""
    documents = await asyncio.to_thread(read_directory, directory)
    for _ in range(5):
        stored = await log.read_stream(PROVIDERS_STREAM)
        bundled: dict[str, str] = {}
        for event in stored:
            if event.type == PROVIDER_REGISTERED:
                data = msgspec.convert(event.data, ProviderRegistered)
                if data.owner == PLATFORM_TENANT and data.registered_by.startswith("bundled:"):
                    bundled[str(data.provider.get("provider", {}).get("id"))] = _canonical(data.provider)
            elif event.type == PROVIDER_REMOVED:
                removed = msgspec.convert(event.data, ProviderRemoved)
                if removed.owner == PLATFORM_TENANT:
                    bundled.pop(removed.provider_id, None)
        fresh = [d for d in documents if bundled.get(str(d["provider"]["id"])) != _canonical(d)]
        if not fresh:
            return []
        events = [_registration(d, PLATFORM_TENANT, f"bundled:{d['provider']['id']}", source) for d in fresh]
        try:
            await log.append(PROVIDERS_STREAM, events, expected_version=len(stored))
        except ConcurrencyError:
            continue
        return [str(d["provider"]["id"]) for d in fresh]
    raise ProviderError("$", "the bundled providers are being registered concurrently too often")


class ProviderView(msgspec.Struct, frozen=True, kw_only=True):
    """A registered provider: its document (seed 004's shape), whose blobs it reacts to, when."""

    provider: dict[str, Any]
    workflows: list[dict[str, Any]]
    owner: str
    """The client whose blobs it reacts to; ``platform``: every client's."""
    registered_at: str
    registered_by: str


class ProviderList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /providers``."""

    providers: list[ProviderView]


class TriggeredRunView(msgspec.Struct, frozen=True, kw_only=True):
    """One execution a provider started for a blob, and what became of its output."""

    execution_id: str
    blob_id: str
    blob_owner: str
    blob_version: int
    """The version of the blob whose event (or ``POST /providers/trigger``) started it."""
    workflow_id: str
    trigger: str
    """``onCreate``, ``onUpdate``, ``onDelete`` or ``manual``."""
    priority: int
    started_at: str
    applied: bool
    """Its output went through the delta transformer onto the blob."""
    applied_version: int | None
    """The blob's version the output made (None when it changed nothing or is not applied yet)."""
    created_blobs: list[str]
    """Derived blobs its output created (``created_blobs`` of the delta transformer)."""
    derived_blobs: list[str]
    """Every blob the run created: its output's and those its steps created through the blob
    routes (seed 004's ``book_chapter_expansion`` saves its expansion that way)."""
    rolled_back: bool


class TriggeredList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /providers/{provider_id}/triggered``: a page of the provider's runs, newest first."""

    provider_id: str
    owner: str
    """The provider's owner (``platform``: it reacts to every client's blobs)."""
    runs: list[TriggeredRunView]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next (older) page; absent on the last one."""


def _view(provider: Provider) -> ProviderView:
    return ProviderView(
        provider=dict(provider.document.get("provider") or {}),
        workflows=list(provider.document.get("workflows") or []),
        owner=provider.owner,
        registered_at=provider.registered_at,
        registered_by=provider.registered_by,
    )


async def _document(request: web.Request, limit: int) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise HTTPError(400, "the body is empty; send a provider as YAML or JSON", error="bad_request")
    if len(raw) > limit:
        raise HTTPError(413, f"the provider is {len(raw)} bytes; at most {limit}")
    try:
        # JSON is YAML: one safe parser (no aliases, bounded depth and size) reads both.
        return load_yaml(raw, what="provider")
    except (InvalidYAMLError, UnsafeYAMLError) as exc:
        raise HTTPError(400, str(exc), error="bad_request") from None


def _owner_for(info: KeyInfo, request: web.Request) -> str:
    """Whose blobs a registration is for: the caller's own, or (admin) ``?owner=`` (default platform)."""
    asked = request.query.get("owner")
    if info.is_admin:
        return asked or PLATFORM_TENANT
    if asked not in (None, info.tenant):
        raise HTTPError(400, "owner is for admin keys: a client registers providers for its own blobs (leave it out)")
    return info.tenant


_TRIGGERED_PAGE = 50
_TRIGGERED_MAX_PAGE = 500


def triggered(
    state: StudioState,
    provider: Provider,
    tenant: str | None,
    *,
    blob_id: str | None = None,
    cursor: str | None = None,
    limit: int = _TRIGGERED_PAGE,
) -> TriggeredList:
    """What ``provider`` started, newest first, a page at a time.

    A run records its provider's id, not its owner: a client's provider reacts to that client's
    blobs only, so its runs are those on the client's blobs; a platform provider's are those on
    every client's (``tenant`` given: that client's only, as a client sees them). A client
    having a provider of the same id as a platform one sees the runs of both on its blobs.

    Raises:
        HTTPError: 400 when ``cursor`` names no run of this page's listing.
    """
    scope = tenant if tenant is not None else (None if provider.owner == PLATFORM_TENANT else provider.owner)
    found: list[TriggeredRunView] = []
    started = cursor is None
    more = False
    for execution_id in reversed(state.runs_of_provider.get(provider.provider_id, [])):
        if not started:
            started = execution_id == cursor
            continue
        run = state.runs.get(execution_id)
        blob = state.blobs.get(run.blob_id) if run is not None else None
        if run is None or blob is None:
            continue
        if (scope is not None and blob.owner != scope) or (blob_id is not None and run.blob_id != blob_id):
            continue
        if len(found) == limit:
            more = True
            break
        found.append(
            TriggeredRunView(
                execution_id=run.execution_id,
                blob_id=run.blob_id,
                blob_owner=blob.owner,
                blob_version=run.blob_version,
                workflow_id=run.workflow_id,
                trigger=run.trigger,
                priority=run.priority,
                started_at=run.started_at,
                applied=run.applied,
                applied_version=run.applied_version,
                created_blobs=list(run.created_blobs),
                derived_blobs=list(
                    dict.fromkeys([*state.blobs_of_execution.get(run.execution_id, []), *run.created_blobs])
                ),
                rolled_back=run.rolled_back,
            )
        )
    if not started:
        raise HTTPError(
            400, f"cursor {str(cursor)[:80]!r} names no run of provider {provider.provider_id}", error="invalid_query"
        )
    return TriggeredList(
        provider_id=provider.provider_id,
        owner=provider.owner,
        runs=found,
        next_cursor=found[-1].execution_id if more and found else None,
    )


def _limit(value: str | None) -> int:
    """The ``limit`` query parameter: default ``_TRIGGERED_PAGE``, at most ``_TRIGGERED_MAX_PAGE``."""
    if value is None or value == "":
        return _TRIGGERED_PAGE
    if not value.isdigit() or len(value) > 6 or int(value) < 1:
        raise HTTPError(400, f"limit must be a whole number of at least 1, got {value[:40]!r}", error="invalid_query")
    return min(int(value), _TRIGGERED_MAX_PAGE)


def install(ctx: StudioContext) -> None:
    """Add the provider routes, and install the triggers, the transformer, lineage and consistency."""
    from nexus.services.studio import consistency, lineage, transformer, triggers

    service = ctx.service

    @service.on_startup
    async def bundled(service: Any) -> None:
        registered = await register_bundled(service.log, source=ctx.source)
        if registered:
            logger.info("bundled providers registered: %s", ", ".join(registered))

    @service.route(
        "POST",
        "/providers",
        summary="Register a provider (seed 004 YAML or JSON): a client for its blobs, an admin for every client",
        response=ProviderView,
        status=201,
        responses={400: "The provider is refused (the field is named)", 413: "The provider is too large"},
        tags=["providers"],
        auth="client",
    )
    async def register(request: web.Request) -> web.Response:
        info: KeyInfo = request[AUTH]
        owner = _owner_for(info, request)
        try:
            document = parse_provider(await _document(request, 256 * 1024))
        except ProviderError as exc:
            raise HTTPError(400, f"provider refused: {exc.field}: {exc.message}", error="bad_request") from None
        provider_id = str(document["provider"]["id"])
        mine = sum(1 for (o, _) in ctx.state.providers if o == owner)
        if (owner, provider_id) not in ctx.state.providers and mine >= _MAX_PROVIDERS_PER_OWNER:
            raise HTTPError(400, f"{owner} has {mine} providers; at most {_MAX_PROVIDERS_PER_OWNER}")
        await ctx.fold.append(PROVIDERS_STREAM, [_registration(document, owner, ctx.actor(info), ctx.source)])
        return json_response(_view(ctx.state.providers[(owner, provider_id)]), status=201)

    @service.route(
        "GET",
        "/providers",
        summary="The providers reacting to the caller's blobs (its own and the platform's; an admin: all)",
        response=ProviderList,
        tags=["providers"],
        auth="client",
    )
    async def list_providers(request: web.Request) -> web.Response:
        info: KeyInfo = request[AUTH]
        providers = list(ctx.state.providers.values())
        if not info.is_admin:
            providers = visible_providers(ctx.state.providers, info.tenant)
        providers.sort(key=lambda p: (p.owner, p.provider_id))
        return json_response(ProviderList(providers=[_view(p) for p in providers]))

    @service.route(
        "DELETE",
        "/providers/{provider_id}",
        summary="Remove one of the caller's providers (an admin: ?owner=, default the platform's)",
        status=204,
        responses={404: "No such provider of the caller's"},
        tags=["providers"],
        auth="client",
    )
    async def remove(request: web.Request) -> web.Response:
        info: KeyInfo = request[AUTH]
        owner = _owner_for(info, request)
        provider_id = request.match_info["provider_id"]
        if (owner, provider_id) not in ctx.state.providers:
            raise HTTPError(404, f"no provider {provider_id!r}")
        event = new_event(
            PROVIDER_REMOVED,
            ProviderRemoved(provider_id=provider_id, owner=owner),
            source=ctx.source,
            subject=provider_id,
            tenant=owner,
        )
        await ctx.fold.append(PROVIDERS_STREAM, [event])
        return web.Response(status=204)

    @service.route(
        "GET",
        "/providers/{provider_id}/triggered",
        summary="What a provider triggered: the executions it started, for which blob, and what their output did",
        response=TriggeredList,
        responses={
            400: "A malformed limit or cursor, or owner from a client",
            404: "No such provider reacting to the caller's blobs",
        },
        tags=["providers"],
        auth="client",
        query={
            "owner": "Admins: the provider's owner (default the platform's); a client sees its own or the platform's",
            "blob_id": "Only the runs started for this blob",
            "limit": f"At most this many (default {_TRIGGERED_PAGE}, at most {_TRIGGERED_MAX_PAGE})",
            "cursor": "From a previous page's next_cursor",
        },
    )
    async def list_triggered(request: web.Request) -> web.Response:
        """Read from the studio's fold (its ``StudioRunStarted`` and ``DeltaApplied`` events). A
        client sees the runs on its own blobs, of its own provider or of a platform provider (its
        own wins when both have the id); another client's provider answers 404 as one that does
        not exist. An admin sees every client's runs of the provider ``owner`` names."""
        info: KeyInfo = request[AUTH]
        provider_id = request.match_info["provider_id"]
        if info.is_admin:
            provider = ctx.state.providers.get((_owner_for(info, request), provider_id))
            tenant = None
        else:
            _owner_for(info, request)
            provider = ctx.state.providers.get((info.tenant, provider_id)) or ctx.state.providers.get(
                (PLATFORM_TENANT, provider_id)
            )
            tenant = info.tenant
        if provider is None:
            raise HTTPError(404, f"no provider {provider_id!r}")
        limit = _limit(request.query.get("limit"))
        answer = triggered(
            ctx.state,
            provider,
            tenant,
            blob_id=request.query.get("blob_id") or None,
            cursor=request.query.get("cursor") or None,
            limit=limit,
        )
        return json_response(answer)

    triggers.install(ctx)
    transformer.install(ctx)
    lineage.install(ctx)
    consistency.install(ctx)
