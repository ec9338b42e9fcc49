"""OpenAPI 3.1 generated from a service's route table and msgspec types."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from nexus.runtime._http import ErrorBody

REF_TEMPLATE = "#/components/schemas/{name}"

SECURITY_SCHEMES: Mapping[str, Mapping[str, Any]] = {
    "client": {
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "A client API key."},
    },
    "worker": {
        "workerToken": {"type": "http", "scheme": "bearer", "description": "A worker token, with X-Worker-ID."},
    },
}
SECURITY_SCHEMES = {**SECURITY_SCHEMES, "any": {**SECURITY_SCHEMES["client"], **SECURITY_SCHEMES["worker"]}}

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class RouteSpec:
    """The OpenAPI description of one route (what ``Service.route`` records).

    Attributes:
        method: HTTP method, upper case.
        path: aiohttp path template (``/v1/jobs/{id}``).
        summary: One line shown in API browsers.
        description: Longer text (default: the handler's docstring).
        request: Type of the JSON request body (a msgspec Struct, ``list[...]``…), or None.
        response: Type of the JSON success body, or None for a body-less or non-JSON answer.
        status: Success status code.
        responses: Other documented outcomes, ``{status: description}`` (bodies are ErrorBody).
        tags: Groups in API browsers.
        auth: ``"client"`` (API key), ``"worker"`` (worker token), ``"any"`` (either) or None (public).
        content_type: Media type of a non-JSON success body (``text/plain; version=0.0.4``…).
        query: Query parameters, ``{name: description}``.
        owned: (noun, path parameter) of the tenant-owned resource the path names, or None;
            published as ``x-nexus-owned`` so the authorization test knows which routes to try
            with another tenant's credential.
    """

    method: str
    path: str
    summary: str
    description: str = ""
    request: Any = None
    response: Any = None
    status: int = 200
    responses: Mapping[int, str] = field(default_factory=dict)
    tags: Sequence[str] = ()
    auth: str | None = None
    content_type: str | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    owned: tuple[str, str] | None = None
    scope: str | None = None
    """The scope the caller must hold (``x-nexus-scope``), or None."""
    error_model: Any = None
    """The type of the route's error bodies (default ErrorBody)."""

    @property
    def operation_id(self) -> str:
        words = re.sub(r"[^A-Za-z0-9]+", "_", f"{self.method.lower()}_{self.path}").strip("_")
        return words or self.method.lower()


def build_openapi(
    *,
    title: str,
    version: str,
    description: str,
    specs: Iterable[RouteSpec],
    app: web.Application | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the declared routes.

    Routes added to ``app`` without ``Service.route`` (plain ``app.router.add_get``) are listed
    too, with the handler's docstring as summary, so the document never misses an endpoint.
    """
    declared = {(s.method, s.path): s for s in specs}
    if app is not None:
        for route in app.router.routes():
            resource = route.resource
            if resource is None or route.method in ("HEAD", "*"):
                continue
            key = (route.method, resource.canonical)
            if key not in declared:
                doc = (getattr(route.handler, "__doc__", None) or "").strip()
                declared[key] = RouteSpec(route.method, resource.canonical, doc.splitlines()[0] if doc else "")

    types: list[Any] = [ErrorBody]
    for spec in declared.values():
        types.extend(t for t in (spec.request, spec.response, spec.error_model) if t is not None)
    unique = list(dict.fromkeys(types))
    refs, components = msgspec.json.schema_components(unique, ref_template=REF_TEMPLATE)
    schema_of = dict(zip(unique, refs, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    security: dict[str, Any] = {}
    for spec in sorted(declared.values(), key=lambda s: (s.path, s.method)):
        path = _PARAM.sub(r"{\1}", spec.path)
        error = {"content": {"application/json": {"schema": schema_of[spec.error_model or ErrorBody]}}}
        operation: dict[str, Any] = {"operationId": spec.operation_id, "summary": spec.summary}
        if spec.description:
            operation["description"] = spec.description
        if spec.tags:
            operation["tags"] = list(spec.tags)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(spec.path)
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            for name, text in spec.query.items()
        ]
        if parameters:
            operation["parameters"] = parameters
        if spec.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[spec.request]}},
            }
        success: dict[str, Any] = {"description": spec.summary or "Success"}
        if spec.response is not None:
            success["content"] = {"application/json": {"schema": schema_of[spec.response]}}
        elif spec.content_type:
            success["content"] = {spec.content_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(spec.status): success}
        if spec.request is not None:
            responses["400"] = {"description": "The body is not JSON or does not match the schema", **error}
            responses["413"] = {"description": "The body is larger than the service accepts", **error}
        if spec.auth is not None:
            schemes = SECURITY_SCHEMES[spec.auth]
            security.update(schemes)
            operation["security"] = [{name: []} for name in schemes]
            responses["401"] = {"description": "Missing, unknown or revoked credentials", **error}
            responses["403"] = {"description": "Credentials of the wrong kind, or without the route's scope", **error}
        if spec.scope is not None:
            operation["x-nexus-scope"] = spec.scope
        if spec.owned is not None:
            noun, param = spec.owned
            operation["x-nexus-owned"] = {"resource": noun, "parameter": param}
            responses["404"] = {"description": f"No such {noun}, or another tenant's", **error}
        for status, text in spec.responses.items():
            responses[str(status)] = {"description": text, **error}
        operation["responses"] = responses
        paths.setdefault(path, {})[spec.method.lower()] = operation

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": components},
    }
    if security:
        document["components"]["securitySchemes"] = security
    return document
