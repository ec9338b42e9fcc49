"""The service runtime: what turns a few small modules into a running Nexus service.

A service is ``settings.py`` (a ServiceSettings subclass), ``bootstrap.py`` (the composition
root), ``api.py`` (routes), optionally ``handlers.py`` (pure functions), and ``__main__.py``.

settings.py::

    @dataclass(frozen=True, kw_only=True)
    class KamSettings(ServiceSettings):
        admin_user: str = "admin"

    def load_settings(env=None) -> KamSettings:
        return KamSettings.from_env("kam", env, admin_user=...)

bootstrap.py (adapters are opened from URLs only when not injected; tests inject them)::

    async def bootstrap(settings, *, log=None, bus=None, raw=None) -> Service:
        service = await build_service(settings, title="Nexus KAM", description="...",
                                      log=log, bus=bus, raw=raw)
        api.install(service)
        return service

api.py — routes with OpenAPI metadata, consumers, commands, background tasks::

    def install(service: Service) -> None:
        @service.route("GET", "/v1/things/{id}", summary="One thing", response=Thing,
                       responses={404: "No such thing"}, auth="client")
        async def get_thing(request: web.Request) -> web.Response:
            thing = ...  or raise HTTPError(404, f"no thing {request.match_info['id']}")
            return json_response(thing)

        @service.consumer(ConsumerSpec(name="kam-things", stream=STREAM_EVT,
                                       filter_subjects=("nexus.evt.workflow.>",)))
        async def on_event(delivery: Delivery) -> None: ...

        @service.command("rebuild")          # nexus.cmd.kam.rebuild on NEXUS_CMD
        async def rebuild(delivery: Delivery) -> bytes: ...

        @service.background                  # runs until shutdown (then cancelled)
        async def sweep(service: Service) -> None: ...

Routes added straight to ``service.app`` (aiohttp) work as well and still appear in
``/openapi.json``; ``app.on_startup`` / ``app.cleanup_ctx`` run as usual. Request bodies are
decoded with ``read_json(request, Type)`` (400 naming the problem, 413 over
``NEXUS_MAX_BODY_BYTES``); raise ``HTTPError(status, message)`` for any other error.

__main__.py::

    raise SystemExit(run(bootstrap, load_settings))

Every service then serves ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``, logs
JSON lines, traces requests and appends, and stops gracefully on SIGTERM/SIGINT.
``Supervisor`` (used by ``nexus up``) runs services as child processes and restarts them.
"""

from nexus.runtime._build import build_service
from nexus.runtime._http import ErrorBody, Handler, HTTPError, json_response, read_json, route_template
from nexus.runtime._openapi import RouteSpec, build_openapi
from nexus.runtime._run import (
    EXIT_PORT_IN_USE,
    Adapters,
    open_adapters,
    open_bus,
    open_raw,
    run,
)
from nexus.runtime._service import AUDIT_STREAM, SERVICE_KEY, Health, Owned, Readiness, Service
from nexus.runtime._settings import (
    DEFAULT_PORTS,
    RELAY_PORT,
    SERVICES,
    ServiceSettings,
    port_variable,
    service_urls,
)
from nexus.runtime._sse import SSE_HEADERS, EventStream
from nexus.runtime._work import KeyedWork

__all__ = [
    "AUDIT_STREAM",
    "DEFAULT_PORTS",
    "EXIT_PORT_IN_USE",
    "RELAY_PORT",
    "SERVICES",
    "SERVICE_KEY",
    "SSE_HEADERS",
    "Adapters",
    "ErrorBody",
    "EventStream",
    "HTTPError",
    "Handler",
    "Health",
    "KeyedWork",
    "Owned",
    "Readiness",
    "RouteSpec",
    "Service",
    "ServiceSettings",
    "build_openapi",
    "build_service",
    "json_response",
    "open_adapters",
    "open_bus",
    "open_raw",
    "port_variable",
    "read_json",
    "route_template",
    "run",
    "service_urls",
]
