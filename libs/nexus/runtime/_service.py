"""``Service``: one Nexus service's HTTP API, consumers, command handlers and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from nexus.auth import (
    AUTH,
    Authenticator,
    KeyInfo,
    KeyView,
    SessionView,
    can_see,
    require_api_key,
    require_client_or_worker,
    require_scope,
    require_worker,
)
from nexus.auth._middleware import ErrorShape, nexus_error
from nexus.bus import Bus, Consumer, ConsumerSpec, Delivery
from nexus.eventlog import EventLog
from nexus.obs import InstrumentedEventLog, render_metrics
from nexus.obs._metrics import SERVICE_RESTARTS
from nexus.proto import STREAM_CMD, cmd_subject, new_event
from nexus.proto.events.platform import AdminAccessed
from nexus.runtime._http import Handler, error_middleware, json_response, observe_middleware, quiet_bad_requests
from nexus.runtime._openapi import RouteSpec, build_openapi
from nexus.runtime._settings import ServiceSettings

logger = logging.getLogger("nexus.runtime")

F = TypeVar("F", bound=Callable[..., Any])
MessageHandler = Callable[[Delivery], Awaitable[bytes | None]]
BackgroundTask = Callable[["Service"], Awaitable[None]]
Hook = Callable[["Service"], Awaitable[None]]
ReadinessCheck = Callable[[], Awaitable[None]]

SERVICE_KEY: web.AppKey[Service] = web.AppKey("nexus_service")
"""``request.app[SERVICE_KEY]`` is the Service, for handlers defined outside a closure."""

AUDIT_STREAM = "audit-admin"
"""The log stream recording every access of an admin key to another tenant's resource."""
ADMIN_ACCESSED = "nexus.platform.admin.accessed"
AUTH_KINDS = ("client", "worker", "any")

OwnerLookup = Callable[[str], "str | Awaitable[str | None] | None"]


@dataclass(frozen=True)
class Owned:
    """How a route finds the owner (tenant) of the resource its path names.

    ``Service.route(..., owned=Owned("execution", "execution_id", engine.tenant_of))``: before
    the handler runs, ``lookup(request.match_info[param])`` gives the resource's tenant, or None
    when there is no such resource. A caller who may not see it (``nexus.auth.can_see``) gets
    the same 404 as for a missing one, so an id never tells whether another tenant has it.

    Attributes:
        noun: What the resource is called in the 404 message (``execution``).
        param: The path parameter holding its id.
        lookup: id → tenant or None (sync or async).
    """

    noun: str
    param: str
    lookup: OwnerLookup


READINESS_TIMEOUT = 2.0
"""Seconds each readiness check may take before /readyz counts it as not ready."""


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /healthz``: the process is alive and serving HTTP."""

    status: str
    service: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /readyz``: whether every dependency answers; ``failed`` names the ones that do not."""

    status: str
    """``ready`` or ``not_ready``."""
    service: str
    checks: dict[str, str]
    """Each check (``nats``, ``log``, …) and ``ok`` or the reason it failed."""
    failed: list[str] = []


class Service:
    """A Nexus service: an aiohttp app with the platform endpoints, plus message consumers.

    A service's ``bootstrap.py`` builds one from injected or opened adapters and declares what
    it does; ``__main__.py`` hands it to ``nexus.runtime.run``. Every declaration is made
    before ``start``::

        service = Service(settings, log=log, bus=bus, title="Nexus KAM")

        @service.route("POST", "/v1/things", summary="Create a thing",
                       request=NewThing, response=Thing, status=201, auth="client")
        async def create(request: web.Request) -> web.Response:
            body = await read_json(request, NewThing)          # 400 / 413 handled for you
            stored = await service.log.append(...)             # counted, timed, traced
            return json_response(Thing(...), status=201)

        @service.consumer(ConsumerSpec(name="kam-costs", stream=STREAM_EVT,
                                       filter_subjects=("nexus.evt.workflow.>",)))
        async def on_event(delivery: Delivery) -> None: ...   # return = ack; see nexus.bus.Handler

        @service.command("recompute")                           # nexus.cmd.kam.recompute
        async def recompute(delivery: Delivery) -> bytes: ...   # bytes answer a request()

        @service.background
        async def sweep(service: Service) -> None:              # cancelled at shutdown
            while True: ...

    The platform endpoints are always there: ``GET /healthz``, ``GET /readyz`` (503 until NATS,
    the log and every ``readiness_check`` answer), ``GET /metrics`` and ``GET /openapi.json``
    (generated from the ``route`` declarations and any route added to ``service.app`` directly).

    Args:
        settings: The service's settings (name, host, port, body limit, platform settings).
        log: The event log; it is wrapped in InstrumentedEventLog (append metrics and spans).
        bus: The bus.
        raw: The Raw blob store, for services that keep blobs (else None).
        title: OpenAPI title (default ``Nexus <name>``).
        version: OpenAPI ``info.version``.
        description: OpenAPI ``info.description``.
        tracer_provider: Spans go to this provider (default: the global one from setup_tracing).
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        log: EventLog,
        bus: Bus,
        raw: Any = None,
        title: str | None = None,
        version: str = "0.1.0",
        description: str = "",
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("nexus.runtime")
        self.log: EventLog = log if isinstance(log, InstrumentedEventLog) else InstrumentedEventLog(log, self._tracer)
        self.bus = bus
        self.raw = raw
        self.keys = KeyView(self.log, audience=settings.name)
        """API keys and worker tokens, folded from the log; used by ``auth=`` routes. Delegated
        tokens are accepted only when minted for this service (their audience)."""
        self.title = title or f"Nexus {settings.name}"
        self.version = version
        self.description = description
        self.tracer_provider = tracer_provider
        self.app = web.Application(
            client_max_size=settings.max_body_bytes,
            middlewares=[observe_middleware(self._tracer), error_middleware(settings.max_body_bytes)],
        )
        self.app[SERVICE_KEY] = self
        self._routes: list[RouteSpec] = []
        self._consumer_specs: list[tuple[ConsumerSpec, MessageHandler]] = []
        self._background: list[BackgroundTask] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._checks: dict[str, ReadinessCheck] = {"nats": bus.ping, "log": self.log.ping}
        self._authenticators: list[Authenticator] = []
        self._consumers: list[Consumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._started = False
        self._stopping = False
        self.stopped = asyncio.Event()
        """Set once ``stop`` has finished."""
        self.port: int | None = None
        """The bound HTTP port once started (useful with port 0)."""
        self._add_platform_routes()
        if settings.restarts:
            SERVICE_RESTARTS.labels(service=settings.name).inc(settings.restarts)

    # -- declarations -----------------------------------------------------------------------

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        description: str = "",
        request: Any = None,
        response: Any = None,
        status: int = 200,
        responses: Mapping[int, str] | None = None,
        tags: Sequence[str] = (),
        auth: str | None = None,
        content_type: str | None = None,
        query: Mapping[str, str] | None = None,
        owned: Owned | None = None,
        scope: str | None = None,
        error_shape: ErrorShape = nexus_error,
        error_model: Any = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: serve ``method path`` with the handler and document it in OpenAPI.

        Args:
            method: ``GET``, ``POST``, ``PUT``, ``PATCH``, ``DELETE``.
            path: aiohttp template, ``/v1/jobs/{id}``; metrics label requests with it.
            summary: One line for the OpenAPI document.
            description: More text (default: the handler's docstring).
            request: msgspec type of the JSON body (decode it with ``read_json``).
            response: msgspec type of the JSON answer (encode it with ``json_response``).
            status: The success status.
            responses: Other outcomes, ``{404: "No such job"}`` (ErrorBody bodies).
            tags: OpenAPI tags.
            auth: ``"client"`` guards the route with an API key, ``"worker"`` with a worker
                token, ``"any"`` with either (see ``nexus.auth``); the caller's KeyInfo is in
                ``request[nexus.auth.AUTH]``.
            content_type: Media type of a non-JSON answer.
            query: Query parameters, ``{name: description}``.
            owned: The resource the path names and how to find its tenant: a caller of
                another tenant gets 404 (needs ``auth``).
            scope: The scope the caller's key or session must hold (``nexus.auth.has_scope``;
                ``admin``: admins only), else 403 (needs ``auth``).
            error_shape: Builds the body of the 401/403/404 this decorator answers (the
                seed-000 job API answers ``{"success": false, "error"}``).
            error_model: The msgspec type of the route's error bodies in OpenAPI (default
                ErrorBody), when ``error_shape`` answers another shape.
        """
        if auth not in (None, *AUTH_KINDS):
            raise ValueError(f"auth={auth!r}: use None, 'client', 'worker' or 'any'")
        if owned is not None and auth is None:
            raise ValueError(f"{method} {path}: an owned resource needs auth")
        if scope is not None and auth is None:
            raise ValueError(f"{method} {path}: a scope needs auth")

        def register(handler: Handler) -> Handler:
            served = handler if owned is None else self._owner_check(handler, owned, method, path, error_shape)
            if scope is not None:
                served = require_scope(scope, shape=error_shape)(served)
            # The list itself, not a copy: authenticators added after this route still count.
            extra = self._authenticators
            if auth == "client":
                served = require_api_key(self.keys, shape=error_shape, authenticators=extra)(served)
            elif auth == "worker":
                served = require_worker(self.keys, shape=error_shape)(served)
            elif auth == "any":
                served = require_client_or_worker(self.keys, shape=error_shape, authenticators=extra)(served)
            self.app.router.add_route(method.upper(), path, served)
            self._routes.append(
                RouteSpec(
                    method=method.upper(),
                    path=path,
                    summary=summary,
                    description=description or (handler.__doc__ or "").strip(),
                    request=request,
                    response=response,
                    status=status,
                    responses=dict(responses or {}),
                    tags=tuple(tags),
                    auth=auth,
                    content_type=content_type,
                    query=dict(query or {}),
                    owned=(owned.noun, owned.param) if owned is not None else None,
                    scope=scope,
                    error_model=error_model,
                )
            )
            return handler

        return register

    def authenticator(self, authenticate: Authenticator) -> Authenticator:
        """Decorator: accept another credential on this service's ``client`` and ``any`` routes.

        Asked when a request carries no API key (see ``nexus.auth.Authenticator``); KAM adds its
        login sessions this way, so every route it declares accepts a session or a key.
        """
        self._authenticators.append(authenticate)
        return authenticate

    def accept_sessions(self) -> SessionView:
        """Accept KAM's login sessions on this service's ``client`` and ``any`` routes.

        The sessions are folded from the log (``nexus.auth.SessionView``), so the service never
        asks KAM; a cookie-authenticated request that changes something needs its CSRF token.
        This is how the web console reaches the service, through KAM's gateway, as its user.
        """
        view = SessionView(self.log)
        self.authenticator(view.authenticate)
        return view

    def _owner_check(self, handler: Handler, owned: Owned, method: str, path: str, shape: ErrorShape) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            resource_id = request.match_info[owned.param]
            tenant = owned.lookup(resource_id)
            if inspect.isawaitable(tenant):
                tenant = await tenant
            info: KeyInfo = request[AUTH]
            if tenant is None or not can_see(info, tenant):
                body = shape("not_found", f"no {owned.noun} {resource_id!r}")
                return web.json_response(body, status=404)
            response = await handler(request)
            if tenant != info.tenant:
                await self.audit_admin(info, method, path, f"{owned.noun} {resource_id}", tenant, response.status)
            return response

        checked.__doc__ = handler.__doc__
        checked.__name__ = handler.__name__
        return checked

    async def audit_admin(
        self, info: KeyInfo, method: str, route: str, resource: str, tenant: str, status: int = 0
    ) -> None:
        """Record that an admin key reached ``resource`` of ``tenant`` (stream ``audit-admin``)."""
        data = AdminAccessed(
            key_id=info.key_id,
            admin=info.owner,
            service=self.name,
            method=method.upper(),
            route=route,
            resource=resource,
            tenant=tenant,
            status=status,
        )
        event = new_event(ADMIN_ACCESSED, data, source=f"nexus/{self.name}", tenant=tenant)
        await self.log.append(AUDIT_STREAM, [event])

    def consumer(self, spec: ConsumerSpec) -> Callable[[MessageHandler], MessageHandler]:
        """Decorator: run the handler for each message of a durable consumer, from start to stop.

        The handler's contract is the bus's (``nexus.bus.Handler``): return to ack, raise
        RetryableError to retry later, PoisonMessageError to dead-letter. The bus handles each
        message inside a span continuing the ``traceparent`` of its headers.
        """

        def register(handler: MessageHandler) -> MessageHandler:
            self._consumer_specs.append((spec, handler))
            return handler

        return register

    def command(
        self, verb: str, *, max_deliver: int = 5, ack_wait_seconds: float = 30.0
    ) -> Callable[[MessageHandler], MessageHandler]:
        """Decorator: handle the commands sent to ``nexus.cmd.<service>.<verb>``.

        A durable consumer ``<service>-cmd-<verb>`` on NEXUS_CMD, shared by every replica. The
        handler's return value (bytes) answers a ``bus.request``; its results should be events
        appended to the log.
        """
        spec = ConsumerSpec(
            name=f"{self.name}-cmd-{verb}",
            stream=STREAM_CMD,
            filter_subjects=(cmd_subject(self.name, verb),),
            max_deliver=max_deliver,
            ack_wait_seconds=ack_wait_seconds,
        )
        return self.consumer(spec)

    def background(self, task: BackgroundTask) -> BackgroundTask:
        """Decorator: run ``task(service)`` from start until shutdown, when it is cancelled.

        A task that raises is logged; it does not bring the service down.
        """
        self._background.append(task)
        return task

    def on_startup(self, hook: Hook) -> Hook:
        """Decorator: ``await hook(service)`` at start, before consumers and HTTP (in order)."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Decorator: ``await hook(service)`` at stop, after HTTP and consumers, before closing adapters."""
        self._shutdown.append(hook)
        return hook

    def readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """Add a dependency to /readyz: ``check()`` must return within 2 s without raising."""
        self._checks[name] = check

    # -- platform endpoints -------------------------------------------------------------------

    def _add_platform_routes(self) -> None:
        @self.route("GET", "/healthz", summary="The process is alive", response=Health, tags=["platform"])
        async def healthz(request: web.Request) -> web.Response:
            return json_response(Health(status="ok", service=self.name))

        @self.route(
            "GET",
            "/readyz",
            summary="NATS, the event log and the service's own dependencies answer",
            response=Readiness,
            responses={503: "Not ready; the body (a Readiness) names what does not answer"},
            tags=["platform"],
        )
        async def readyz(request: web.Request) -> web.Response:
            readiness = await self.readiness()
            return json_response(readiness, status=200 if readiness.status == "ready" else 503)

        @self.route(
            "GET",
            "/metrics",
            summary="Prometheus metrics (text exposition format; OpenMetrics, with exemplars, when asked for)",
            content_type="text/plain; version=0.0.4",
            tags=["platform"],
        )
        async def metrics(request: web.Request) -> web.Response:
            # A scraper that accepts OpenMetrics (Prometheus does) gets the latency
            # histograms' exemplars: the trace id of an observation in each bucket.
            body, content_type = render_metrics(request.headers.get("Accept", ""))
            response = web.Response(body=body)
            response.headers["Content-Type"] = content_type
            return response

        @self.route("GET", "/openapi.json", summary="This document (OpenAPI 3.1)", tags=["platform"])
        async def openapi(request: web.Request) -> web.Response:
            return json_response(self.openapi())

    async def readiness(self) -> Readiness:
        """Run every readiness check concurrently, each bounded by READINESS_TIMEOUT."""

        async def run(check: ReadinessCheck) -> str:
            try:
                await asyncio.wait_for(check(), READINESS_TIMEOUT)
            except TimeoutError:
                return f"no answer within {READINESS_TIMEOUT:g} s"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return "ok"

        names = list(self._checks)
        results = await asyncio.gather(*(run(self._checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        if not self._started:
            checks["service"] = "starting"
        elif self._stopping:
            checks["service"] = "stopping"
        failed = [name for name, result in checks.items() if result != "ok"]
        return Readiness(status="not_ready" if failed else "ready", service=self.name, checks=checks, failed=failed)

    def openapi(self) -> dict[str, Any]:
        """The service's OpenAPI 3.1 document."""
        return build_openapi(
            title=self.title,
            version=self.version,
            description=self.description,
            specs=self._routes,
            app=self.app,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Run startup hooks, start consumers and background tasks, then serve HTTP."""
        for hook in self._startup:
            await hook(self)
        for spec, handler in self._consumer_specs:
            self._consumers.append(await self.bus.consume(spec, handler))
        for task in self._background:
            self._tasks.append(asyncio.create_task(self._run_background(task), name=f"{self.name}:{task.__name__}"))
        quiet_bad_requests()
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=self.settings.shutdown_timeout
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        self._started = True
        logger.info("%s listening on http://%s:%s", self.name, self.settings.host, self.port, extra={"port": self.port})

    async def _run_background(self, task: BackgroundTask) -> None:
        try:
            await task(self)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("background task %s failed", task.__name__)

    async def stop(self) -> None:
        """Stop gracefully: readiness off, consumers drained, background tasks cancelled,
        in-flight requests finished (up to ``shutdown_timeout``), hooks run, adapters closed.
        Safe to call twice."""
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        logger.info("%s stopping", self.name)
        # Together, not one after the other: each waits for its pull in flight to expire, and a
        # worker runs one pull loop per capacity slot.
        await asyncio.gather(*(consumer.stop() for consumer in self._consumers), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        for hook in self._shutdown:
            try:
                await hook(self)
            except Exception:
                logger.exception("shutdown hook %s failed", hook.__name__)
        for closer in (self.bus.close, self.log.close, getattr(self.raw, "close", None)):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        self.stopped.set()
        logger.info("%s stopped", self.name)

    async def serve(self) -> None:
        """Start, serve until SIGTERM or SIGINT (or the supervisor's exit), then stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = None
        supervisor = os.environ.get("NEXUS_SUPERVISOR_PID")
        if supervisor and supervisor.isdigit():
            watcher = asyncio.create_task(_watch_parent(int(supervisor), stop))
        try:
            await self.start()
            await stop.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    # A supervisor killed with SIGKILL cannot stop its children; they notice they were orphaned
    # (their parent changes) and stop themselves instead of holding ports forever.
    while os.getppid() == pid:  # noqa: ASYNC110 - no event tells a process its parent died
        await asyncio.sleep(1.0)
    logger.warning("the supervisor (pid %s) is gone; stopping", pid)
    stop.set()
