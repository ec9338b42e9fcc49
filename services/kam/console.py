"""The web console: its files, the gateway to the other services, and the platform's health.

KAM serves the console on its own origin (seed 002's frontend, seed 000's job monitoring and
seed 004's studio in one page): ``GET /`` is the page, ``GET /console/<file>`` its modules and
style sheet, all committed in ``services/kam/console/`` (plain ES modules, no build step, no
CDN: the platform works offline).

The page calls KAM's own ``/api/...`` and, through the gateway, the workflow service and the
studio: ``/svc/workflow/<path>`` and ``/svc/studio/<path>`` are forwarded unchanged (method,
path, query, body, the credential headers and cookies; answers streamed back, Server-Sent
Events included). The gateway decides nothing: the service behind it checks the credential
(the user's session, see ``nexus.auth.SessionView``), its CSRF token and who owns what, exactly
as for a direct call. One origin means the session cookie (HttpOnly, SameSite=Strict) is the
only credential the browser holds, and no CORS policy is needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from nexus.auth import ADMIN_SCOPE
from nexus.runtime import HTTPError, json_response
from nexus.services.kam.context import KamContext

__all__ = ["CONSOLE_DIR", "GATEWAY_SERVICES", "HealthAnswer", "install"]

logger = logging.getLogger(__name__)

CONSOLE_DIR = Path(__file__).with_name("console")
"""The console's committed files."""
GATEWAY_SERVICES = ("workflow", "studio")
"""The services ``/svc/<name>/…`` forwards to."""
GATEWAY_CONNECTIONS = 2000
"""Connections the gateway keeps to the services at most (an open event stream holds one)."""
HEALTH_SERVICES = ("workflow", "granulator", "studio", "relay")
"""The processes whose ``/readyz`` the health page asks (KAM answers for itself)."""

_FILE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\.(?:js|css|svg|html)")
_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "html": "text/html"}
# Headers that belong to one connection, not to the message (RFC 9110 §7.6.1), and Host.
_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
# The page may load only its own files and talk only to its own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
SANDBOX_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
"""Added to every answer the gateway forwards (replacing the service's own)."""
_SANDBOXED = frozenset(name.lower() for name in SANDBOX_HEADERS)
GATEWAY: web.AppKey[Gateway] = web.AppKey("kam_gateway")


@dataclass(frozen=True)
class _File:
    body: bytes
    etag: str
    content_type: str


class Files:
    """The console's files, read once at start (they are part of the release, not data)."""

    def __init__(self, directory: Path = CONSOLE_DIR) -> None:
        self._files: dict[str, _File] = {}
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            if _FILE.fullmatch(path.name):
                body = path.read_bytes()
                content_type = _TYPES[path.suffix.lstrip(".")]
                self._files[path.name] = _File(body, f'"{hashlib.sha256(body).hexdigest()[:32]}"', content_type)

    def answer(self, request: web.Request, name: str) -> web.Response:
        """The file (200), 304 when the browser's copy is current, 404 for any other name."""
        found = self._files.get(name) if _FILE.fullmatch(name) else None
        if found is None:
            raise HTTPError(404, f"the console has no file {name!r}")
        headers = {**SECURITY_HEADERS, "ETag": found.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == found.etag:
            return web.Response(status=304, headers=headers)
        charset = "utf-8" if found.content_type.startswith("text/") else None
        return web.Response(body=found.body, content_type=found.content_type, charset=charset, headers=headers)


class Gateway:
    """Forwards ``/svc/<service>/…`` to the service's base URL and streams the answer back."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = {name: urls[name] for name in GATEWAY_SERVICES if name in urls}
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        """The shared client session (made on first use, inside the event loop)."""
        if self._http is None:
            # No total timeout: a stream of Server-Sent Events lasts as long as the page is open.
            # `connect` bounds the wait for a free connection too: open streams never make every
            # other call wait forever. The pool is large, as every open console page holds one.
            timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=5)
            jar = aiohttp.DummyCookieJar()  # cookies pass through in headers, never kept here
            connector = aiohttp.TCPConnector(limit=GATEWAY_CONNECTIONS)
            self._http = aiohttp.ClientSession(
                timeout=timeout, auto_decompress=False, cookie_jar=jar, connector=connector
            )
        return self._http

    async def close(self) -> None:
        """Close the client session (service shutdown)."""
        if self._http is not None:
            await self._http.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """The service's answer to the request, streamed as it comes (502 if the service does not answer)."""
        service = request.match_info["service"]
        base = self.urls.get(service)
        if base is None:
            raise HTTPError(404, f"the gateway serves {', '.join(GATEWAY_SERVICES)}, not {service!r}")
        prefix = f"/svc/{service}/"
        # The target as sent: a request in absolute form (``GET http://host/svc/...``) or with the
        # service's name percent-encoded is routed here too, and cutting it at a fixed length
        # would let it name another host. Only the plain form is forwarded.
        if not request.raw_path.startswith(prefix):
            raise HTTPError(404, f"the gateway forwards only /svc/<service>/<path>, not {request.raw_path[:80]!r}")
        rest = request.raw_path[len(prefix) - 1 :]
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Prefix"] = prefix.rstrip("/")
        body = request.content if request.can_read_body else None
        try:
            upstream = await self.http().request(
                request.method,
                base + rest,
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            logger.warning("gateway: %s does not answer at %s: %r", service, base, exc)
            raise HTTPError(502, f"the {service} service does not answer: try again shortly") from None
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP and name.lower() not in _SANDBOXED:
                    response.headers.add(name, value)
            # Whatever the service answers (an uploaded file with the uploader's content type
            # among it) is never a page of this origin: opened in a tab it runs no script and
            # reads no cookie; the console's own fetches and event streams are unaffected.
            response.headers.update(SANDBOX_HEADERS)
            if upstream.headers.get("Content-Length") is not None and "Content-Encoding" not in upstream.headers:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


# -- health -----------------------------------------------------------------------------------


class ServiceHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One process's readiness as its ``/readyz`` answered."""

    name: str
    url: str
    status: str
    """``ready``, ``not_ready`` or ``unreachable``."""
    checks: dict[str, str] = {}
    millis: float = 0.0


class HealthAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The platform at a glance (the console's health page)."""

    status: str
    """``ready`` when every process is, else ``degraded``."""
    services: list[ServiceHealth]
    nats: str
    """KAM's own connection to NATS: ``ok`` or what is wrong."""
    log_head: int
    """The log's last global position."""
    relay_lag: float | None
    """Events appended and not yet published (the relay's gauge), None if it did not say."""
    relay_position: float | None


async def _probe(http: aiohttp.ClientSession, name: str, url: str) -> ServiceHealth:
    started = time.perf_counter()
    try:
        async with http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=3)) as resp:
            body = await resp.json(content_type=None)
            checks = {str(k): str(v) for k, v in (body.get("checks") or {}).items()} if isinstance(body, dict) else {}
            status = str(body.get("status", "not_ready")) if isinstance(body, dict) else "not_ready"
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        return ServiceHealth(name=name, url=url, status="unreachable", checks={"http": type(exc).__name__})
    return ServiceHealth(
        name=name, url=url, status=status, checks=checks, millis=round((time.perf_counter() - started) * 1000, 1)
    )


async def _relay_gauges(http: aiohttp.ClientSession, url: str) -> tuple[float | None, float | None]:
    try:
        async with http.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=3)) as resp:
            text = await resp.text()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None, None
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("nexus_relay_lag_events", "nexus_relay_checkpoint_position"):
            gauges[family.name] = sum(sample.value for sample in family.samples)
    return gauges.get("nexus_relay_lag_events"), gauges.get("nexus_relay_checkpoint_position")


def install(ctx: KamContext) -> Gateway:
    """Serve the console's page and files, the gateway and the health route."""
    service = ctx.service
    files = Files()
    gateway = Gateway(dict(ctx.settings.services))
    service.app[GATEWAY] = gateway

    @service.route("GET", "/", summary="The web console (its page)", content_type="text/html", tags=["console"])
    async def page(request: web.Request) -> web.Response:
        return files.answer(request, "index.html")

    @service.route(
        "GET",
        "/console/{name}",
        summary="The web console's modules and style sheet",
        content_type="text/javascript",
        responses={404: "No such file"},
        tags=["console"],
    )
    async def console_file(request: web.Request) -> web.Response:
        return files.answer(request, request.match_info["name"])

    # The gateway is not one of KAM's operations, so it is not in KAM's OpenAPI document: each
    # forwarded call is an operation of the service behind it, documented (and guarded) there.
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        service.app.router.add_route(method, "/svc/{service}/{tail:.*}", gateway.forward)

    @ctx.route(
        "GET",
        "/console/health",
        summary="Every process's readiness, NATS, the log's head and the relay's lag (admins)",
        response=HealthAnswer,
        auth="client",
        scope=ADMIN_SCOPE,
        tags=["console"],
    )
    async def health(request: web.Request) -> web.Response:
        urls = {**ctx.settings.services}
        http = gateway.http()
        own = await service.readiness()
        probes = [
            ServiceHealth(name="kam", url="", status=own.status, checks=dict(own.checks)),
            *await asyncio.gather(*(_probe(http, name, urls[name]) for name in HEALTH_SERVICES if name in urls)),
        ]
        lag, position = await _relay_gauges(http, urls["relay"]) if "relay" in urls else (None, None)
        try:
            head = await service.log.head()
        except Exception:  # the log's own failure is what the page must show, not a 500
            logger.exception("health: the log's head cannot be read")
            head = -1
        nats = next((p.checks.get("nats", "unknown") for p in probes if p.name == "kam"), "unknown")
        ready = all(p.status == "ready" for p in probes) and head >= 0
        return json_response(
            HealthAnswer(
                status="ready" if ready else "degraded",
                services=list(probes),
                nats=nats,
                log_head=head,
                relay_lag=lag,
                relay_position=position,
            )
        )

    @service.on_shutdown
    async def close_gateway(service: object) -> None:
        await gateway.close()

    return gateway
