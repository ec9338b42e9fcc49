"""HTTP routes of the workflow engine: definitions, schemas, executions and the queue.

Every route needs a client API key (``x-service-key`` or ``X-API-Key``): a missing, unknown or
revoked key is answered 401 ``{"error": "unauthorized", "message"}``, a worker token 403.

Everything belongs to a tenant (the client of the key). A client registers definitions in its
own namespace and sees its own and the platform's; it sees, streams and cancels only its own
executions (another tenant's answers 404, like a missing one). An admin key (scope ``admin``)
sees every tenant's, and each such access is recorded in stream ``audit-admin``.

Errors are JSON: ``{"error", "message"}``, plus ``"problems": [{"path", "message"}]`` when a
definition or an input is refused (400), naming every field at fault.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from typing import Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.bus import Delivery, PoisonMessageError
from nexus.proto import PLATFORM_TENANT, EnvelopeError, decode_event
from nexus.proto.commands import TENANT_HEADER
from nexus.runtime import EventStream, HTTPError, Owned, Service, json_response
from nexus.services.workflow.context import FINAL_STATUSES, STATUSES, WorkflowContext
from nexus.services.workflow.definitions import load_document
from nexus.services.workflow.errors import (
    DefinitionError,
    InactiveWorkflowError,
    ProblemsError,
    UnknownExecutionError,
    UnknownWorkflowError,
)

__all__ = ["OPTIONAL_MODULES", "WorkflowRoutes", "install", "install_optional"]

logger = logging.getLogger("nexus.workflow.api")

OPTIONAL_MODULES = ("jobapi", "uploads", "anomalies", "triggers", "phases", "live", "pipelines")
"""Modules of the service that add routes of their own when present (``install(service, ctx)``)."""


class Problem(msgspec.Struct, frozen=True):
    path: str
    message: str


class ProblemsBody(msgspec.Struct, frozen=True, kw_only=True):
    """A 400 answer for a refused definition or input: every problem, by path."""

    error: str
    message: str
    problems: list[Problem]


class StartExecution(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /executions``."""

    workflow_id: str
    """The workflow to run (its latest version)."""
    input: Any = None
    """The input; checked against the workflow's input schema."""
    priority: int = 50
    """0-100; higher starts first."""
    idempotency_key: str | None = None
    """The same key returns the same execution."""
    correlation_id: str | None = None
    max_retries: int | None = None
    """Times the execution may be dispatched again after its driver stopped without finishing it
    (default: the workflow's ``max_retries``, else no limit)."""
    metadata: dict[str, Any] | None = None
    """Your own fields, kept with the execution (at most 16 KiB of JSON)."""


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """``202``: the execution is queued (durably)."""

    id: str
    status: str
    workflow_id: str


def _caller(request: web.Request) -> KeyInfo:
    return request[AUTH]


def _scope(request: web.Request) -> str | None:
    """The tenant whose resources a listing shows: the caller's, or None (all) for an admin."""
    info = _caller(request)
    return None if info.is_admin else info.tenant


def _with_tenant(body: dict[str, Any], tenant: str) -> dict[str, Any]:
    return {**body, "tenant": tenant}


def _problems(exc: ProblemsError, code: str) -> web.Response:
    body = ProblemsBody(
        error=code,
        message=str(exc),
        problems=[Problem(path, message) for path, message in exc.problems],
    )
    return json_response(body, status=400)


async def _document(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise HTTPError(400, "the request body is empty; send a YAML or JSON definition", error="bad_request")
    return load_document(raw)


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, f"query parameter {name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise HTTPError(400, f"query parameter {name}={value} must be between {lo} and {hi}")
    return value


class WorkflowRoutes:
    """The handlers of the engine's routes and commands, over one ``WorkflowContext``.

    The handlers carry no docstrings on purpose: ``Service.route`` would publish a handler's
    docstring as the route's OpenAPI description, and the descriptions are the summaries given
    in ``install``. The command handlers' docstrings document their subjects.
    """

    def __init__(self, ctx: WorkflowContext) -> None:
        self.ctx = ctx
        self.engine = ctx.engine
        self.registry = ctx.registry

    # -- definitions ----------------------------------------------------------------------

    async def post_workflow(self, request: web.Request) -> web.Response:
        try:
            tenant = _caller(request).tenant
            workflow = await self.registry.register_workflow(await _document(request), source="api", tenant=tenant)
        except DefinitionError as exc:
            return _problems(exc, "invalid_definition")
        return json_response(_with_tenant(workflow.to_json(), tenant), status=201)

    async def list_workflows(self, request: web.Request) -> web.Response:
        listed = self.registry.workflow_entries(_scope(request))
        return json_response({"workflows": [_with_tenant(w.to_json(), t) for t, w in listed]})

    async def get_workflow(self, request: web.Request) -> web.Response:
        registry = self.registry
        workflow_id = request.match_info["workflow_id"]
        tenant = _caller(request).tenant
        version = _int_query(request, "version", 0, 0, 1_000_000) or None
        workflow = registry.get_workflow(workflow_id, version, tenant=tenant)
        if workflow is None:
            raise HTTPError(404, str(UnknownWorkflowError(workflow_id, version)))
        body = _with_tenant(workflow.to_json(), registry.workflow_tenant(workflow_id, tenant) or PLATFORM_TENANT)
        body["versions"] = len(registry.workflow_versions(workflow_id, tenant=tenant))
        return json_response(body)

    async def post_schema(self, request: web.Request) -> web.Response:
        try:
            tenant = _caller(request).tenant
            schema = await self.registry.register_schema(await _document(request), source="api", tenant=tenant)
        except DefinitionError as exc:
            return _problems(exc, "invalid_schema")
        return json_response(_with_tenant(schema.to_json(), tenant), status=201)

    async def list_schemas(self, request: web.Request) -> web.Response:
        listed = self.registry.schema_entries(_scope(request))
        return json_response({"schemas": [_with_tenant(s.to_json(), t) for t, s in listed]})

    async def get_schema(self, request: web.Request) -> web.Response:
        schema = self.registry.get_schema(request.match_info["schema_id"], tenant=_caller(request).tenant)
        if schema is None:
            raise HTTPError(404, f"schema {request.match_info['schema_id']!r} is not registered")
        return json_response(schema.to_json())

    # -- executions -----------------------------------------------------------------------

    async def post_execution(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw or b"null", type=StartExecution)
        except msgspec.ValidationError as exc:
            error = EnvelopeError.from_msgspec(exc)
            return json_response(
                ProblemsBody(error="bad_request", message=str(exc), problems=[Problem(error.field, error.reason)]),
                status=400,
            )
        except msgspec.DecodeError as exc:
            raise HTTPError(400, f"the body is not JSON: {exc}", error="bad_json") from None
        try:
            execution_id = await self.engine.start(
                body.workflow_id,
                body.input,
                priority=body.priority,
                idempotency_key=body.idempotency_key,
                correlation_id=body.correlation_id,
                tenant=_caller(request).tenant,
                max_retries=body.max_retries,
                metadata=body.metadata,
            )
        except ProblemsError as exc:
            return _problems(exc, "invalid_input")
        except UnknownWorkflowError as exc:
            raise HTTPError(404, str(exc)) from None
        except InactiveWorkflowError as exc:
            raise HTTPError(409, str(exc), error="inactive") from None
        state = self.engine.get(execution_id)
        status = state.status if state else "QUEUED"
        return json_response(
            Accepted(id=execution_id, status=status, workflow_id=body.workflow_id),
            status=202,
            headers={"Location": f"/executions/{execution_id}"},
        )

    async def list_executions(self, request: web.Request) -> web.Response:
        status = request.query.get("status") or None
        if status is not None and status.upper() not in STATUSES:
            raise HTTPError(400, f"status={status!r} is not one of {', '.join(STATUSES)}")
        limit = _int_query(request, "limit", 50, 1, 1000)
        offset = _int_query(request, "offset", 0, 0, 10**9)
        filters = {
            "status": status.upper() if status else None,
            "workflow_id": request.query.get("workflow_id") or None,
            "tenant": _scope(request),
        }
        states = self.engine.list(limit=limit, offset=offset, **filters)
        total = self.ctx.views.count(**filters)
        return json_response(
            {"executions": [s.to_json() for s in states], "total": total, "limit": limit, "offset": offset}
        )

    async def _state(self, execution_id: str) -> Any:
        state = self.engine.get(execution_id) or await self.engine.load(execution_id)
        if state is None:
            raise HTTPError(404, str(UnknownExecutionError(execution_id)))
        return state

    async def get_execution(self, request: web.Request) -> web.Response:
        return json_response((await self._state(request.match_info["execution_id"])).to_json())

    async def get_events(self, request: web.Request) -> web.Response:
        events = await self.engine.history(request.match_info["execution_id"])
        if not events:
            raise HTTPError(404, str(UnknownExecutionError(request.match_info["execution_id"])))
        return json_response({"events": events})

    async def cancel_execution(self, request: web.Request) -> web.Response:
        reason = "cancelled"
        raw = await request.read()
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise HTTPError(400, "the body is not JSON", error="bad_json") from None
            if isinstance(body, dict) and isinstance(body.get("reason"), str):
                reason = body["reason"]
        try:
            state = await self.engine.cancel(request.match_info["execution_id"], reason)
        except UnknownExecutionError as exc:
            raise HTTPError(404, str(exc)) from None
        return json_response(state.to_json(), status=202)

    async def stream_execution(self, request: web.Request) -> web.StreamResponse:
        execution_id = request.match_info["execution_id"]
        await self._state(execution_id)
        async with EventStream(request, keepalive=self.ctx.settings.sse_keepalive_seconds) as sse:
            # Event ids are the execution's versions: a client reconnecting with Last-Event-ID
            # gets only the states after the last one it saw.
            after = sse.last_event_version()
            async for state in sse.each(self.engine.watch(execution_id)):
                final = state.status in FINAL_STATUSES
                if after is None or state.version > after:
                    event = "final" if final else "state"
                    await sse.send(msgspec.json.encode(state.to_json()), event=event, id=state.version)
                if final:
                    break
        return sse.response

    async def queue_stats(self, request: web.Request) -> web.Response:
        return json_response(self.engine.queue_stats(_scope(request)))

    # -- commands -------------------------------------------------------------------------

    async def start_command(self, delivery: Delivery) -> bytes:
        """``nexus.cmd.workflow.start``: {workflow_id, input, priority, idempotency_key} as a CloudEvent's data
        (or bare JSON). Without a key, the message's id is the key, so a redelivery starts nothing new."""
        data, message_id = _command_data(delivery)
        try:
            execution_id = await self.engine.start(
                str(data.get("workflow_id", "")),
                data.get("input"),
                priority=data.get("priority", 50),
                idempotency_key=data.get("idempotency_key") or message_id,
                correlation_id=data.get("correlation_id"),
                causation_id=message_id,
                trigger=data.get("trigger"),
                tenant=_command_tenant(delivery),
            )
        except (ProblemsError, UnknownWorkflowError, InactiveWorkflowError) as exc:
            raise PoisonMessageError(str(exc)) from None
        return msgspec.json.encode({"id": execution_id})

    async def register_command(self, delivery: Delivery) -> bytes:
        """``nexus.cmd.workflow.register``: {kind: workflow|schema, document} (document: YAML/JSON text or object)."""
        data, _ = _command_data(delivery)
        document = data.get("document", data)
        try:
            tenant = _command_tenant(delivery)
            if data.get("kind") == "schema":
                item: Any = await self.registry.register_schema(document, source="command", tenant=tenant)
            else:
                item = await self.registry.register_workflow(document, source="command", tenant=tenant)
        except DefinitionError as exc:
            raise PoisonMessageError(str(exc)) from None
        return msgspec.json.encode({"id": item.id, "version": item.version})


def install(service: Service, ctx: WorkflowContext) -> None:
    """Add the engine's routes and commands to ``service`` (the handlers are ``WorkflowRoutes``'s)."""
    routes = WorkflowRoutes(ctx)
    # Every route of the engine needs a client API key, checked against the KeyView folded from
    # the log; the platform endpoints (/healthz, /readyz, /metrics, /openapi.json) stay open.
    route = functools.partial(service.route, auth="client")

    # -- definitions ----------------------------------------------------------------------

    route(
        "POST",
        "/workflows",
        summary="Register a workflow (YAML or JSON); a new version each time",
        status=201,
        responses={400: "The definition is refused; every problem is listed by path"},
        tags=["workflows"],
    )(routes.post_workflow)
    route(
        "GET",
        "/workflows",
        summary="The latest version of every workflow the caller sees (its own and the platform's)",
        tags=["workflows"],
    )(routes.list_workflows)
    route(
        "GET",
        "/workflows/{workflow_id}",
        summary="A workflow (latest version, or ?version=N)",
        responses={404: "No such workflow or version"},
        query={"version": "a version number (default: the latest)"},
        tags=["workflows"],
    )(routes.get_workflow)
    route(
        "POST",
        "/schemas",
        summary="Register a JSON schema (seed 004 format, YAML or JSON)",
        status=201,
        responses={400: "The schema is refused; every problem is listed by path"},
        tags=["schemas"],
    )(routes.post_schema)
    route("GET", "/schemas", summary="Every schema the caller sees (its own and the platform's)", tags=["schemas"])(
        routes.list_schemas
    )
    route("GET", "/schemas/{schema_id}", summary="A schema", responses={404: "No such schema"}, tags=["schemas"])(
        routes.get_schema
    )

    # -- executions -----------------------------------------------------------------------

    route(
        "POST",
        "/executions",
        summary="Start an execution (queued durably; 202 with its id)",
        request=StartExecution,
        response=Accepted,
        status=202,
        responses={400: "Bad body or input (every field at fault is named)", 404: "No such workflow"},
        tags=["executions"],
    )(routes.post_execution)
    route(
        "GET",
        "/executions",
        summary="The caller's executions, newest first (an admin: every tenant's)",
        query={
            "status": f"one of {', '.join(STATUSES)}",
            "workflow_id": "only this workflow's",
            "limit": "1-1000 (default 50)",
            "offset": "how many to skip (default 0)",
        },
        tags=["executions"],
    )(routes.list_executions)
    owned_execution = Owned("execution", "execution_id", ctx.engine.tenant_of)
    route(
        "GET",
        "/executions/{execution_id}",
        summary="An execution: status, current step, outputs, error, timings",
        owned=owned_execution,
        responses={404: "No such execution"},
        tags=["executions"],
    )(routes.get_execution)
    route(
        "GET",
        "/executions/{execution_id}/events",
        summary="The execution's history: every event of stream execution-<id>",
        owned=owned_execution,
        responses={404: "No such execution"},
        tags=["executions"],
    )(routes.get_events)
    route(
        "POST",
        "/executions/{execution_id}/cancel",
        summary="Cancel an execution (compensations of completed steps run; final status CANCELLED)",
        owned=owned_execution,
        status=202,
        responses={404: "No such execution"},
        tags=["executions"],
    )(routes.cancel_execution)
    route(
        "GET",
        "/executions/{execution_id}/stream",
        summary="Server-Sent Events: the state after each transition, until a final one",
        owned=owned_execution,
        content_type="text/event-stream",
        responses={404: "No such execution"},
        tags=["executions"],
    )(routes.stream_execution)
    route(
        "GET",
        "/queue/stats",
        summary="The queue as the caller sees it (its own executions; an admin: all, and the replicas' load)",
        tags=["executions"],
    )(routes.queue_stats)

    # -- commands -------------------------------------------------------------------------

    service.command("start")(routes.start_command)
    service.command("register")(routes.register_command)


def _command_tenant(delivery: Delivery) -> str:
    """The tenant a command acts for: its ``Nexus-Tenant`` header (set by a platform identity),
    else the platform. What the payload says is never taken for it."""
    return delivery.headers.get(TENANT_HEADER) or PLATFORM_TENANT


def _command_data(delivery: Delivery) -> tuple[dict[str, Any], str | None]:
    """A command's data: a CloudEvent's ``data`` (and its id), or a bare JSON object."""
    try:
        event = decode_event(delivery.data)
    except EnvelopeError as envelope_error:
        try:
            data = json.loads(delivery.data)
        except ValueError:
            raise PoisonMessageError("the command is neither a CloudEvent nor a JSON object") from None
        if not isinstance(data, dict):
            raise PoisonMessageError("the command's body must be a JSON object") from None
        if "specversion" in data:
            # It means to be a CloudEvent: say what is wrong with it, not with a bare command.
            raise PoisonMessageError(str(envelope_error)) from None
        return data, delivery.headers.get("Nats-Msg-Id")
    if not isinstance(event.data, dict):
        raise PoisonMessageError("the command's data must be a JSON object")
    return event.data, event.id


def install_optional(service: Service, ctx: WorkflowContext) -> list[str]:
    """Call ``install(service, ctx)`` of each optional module that exists; returns their names."""
    installed = []
    for name in OPTIONAL_MODULES:
        try:
            module = importlib.import_module(f"nexus.services.workflow.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nexus.services.workflow.{name}":
                continue
            raise
        install_fn = getattr(module, "install", None)
        if install_fn is not None:
            install_fn(service, ctx)
            installed.append(name)
    return installed
