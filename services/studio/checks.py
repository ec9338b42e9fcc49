"""The seed's blob routes its workflows call: ``POST /blobs/validate`` and ``POST /blobs/metadata``.

Both name the blob in the body, so the owner check is made here (the route decorator checks
path parameters only): another client's blob answers the same 404 as a missing one.

Schemas are the workflow service's, read from the log (services never import each other):
stream ``schema-<client>.<id>`` (the blob owner's own schema) first, then ``schema-<id>`` (the
platform's, where the workflow service records its bundled schemas at start, seed 004's
``blob_input_schema_v1`` among them). The latest version's ``definition`` is the JSON Schema.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import jsonschema
import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo, can_see
from nexus.proto import PLATFORM_TENANT
from nexus.runtime import HTTPError, json_response, read_json
from nexus.services.studio.content import ContentError, decode_json, kind_of
from nexus.services.studio.context import StudioContext

if TYPE_CHECKING:
    from nexus.services.studio.blobs import Blobs
    from nexus.services.studio.state import Blob

__all__ = ["METADATA_FIELDS", "MetadataRequest", "ValidateRequest", "Validation", "install", "load_schema"]

SCHEMA_REGISTERED = "nexus.workflow.schema.registered"
MAX_ERRORS = 50
"""Validation errors listed at most (the first ones, by path)."""
_SCHEMA_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

METADATA_FIELDS = (
    "id",
    "content_type",
    "size",
    "checksum",
    "sha256",
    "version",
    "created_at",
    "updated_at",
    "parent_id",
    "owner",
    "deleted",
    "metadata",
    "line_count",
    "word_count",
)
"""What ``POST /blobs/metadata`` can extract; also ``metadata.<field>`` (one field of the metadata)."""
_DEFAULT_FIELDS = ["content_type", "size", "checksum"]
_COUNTED = frozenset({"line_count", "word_count"})


class ValidateRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /blobs/validate``."""

    blob_id: str
    schema_id: str | None = None
    """A schema registered in the workflow service (the owner's or the platform's). None checks
    only that the content is well formed for its content type (JSON parses, text is UTF-8)."""
    version: int | None = None
    """A version of the blob (default the current one)."""


class ValidationError(msgspec.Struct, frozen=True, kw_only=True):
    """One way the content breaks the schema."""

    path: str
    """A JSON Pointer into the content (``/characters/0/name``; empty for the whole)."""
    message: str


class Validation(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the blob's content is valid."""

    valid: bool
    errors: list[ValidationError]
    """At most 50, the first by path."""
    blob_id: str
    version: int
    schema_id: str | None = None
    schema_version: int | None = None


class MetadataRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /blobs/metadata``."""

    blob_id: str
    extract_fields: list[str] | None = msgspec.field(default=None)
    """Any of ``METADATA_FIELDS`` or ``metadata.<field>`` (default content_type, size, checksum)."""
    version: int | None = None


async def load_schema(ctx: StudioContext, owner: str, schema_id: str) -> tuple[dict[str, Any], int] | None:
    """The JSON Schema registered as ``schema_id`` for ``owner`` (its own, else the platform's)
    and its version; None when there is none."""
    streams = [f"schema-{schema_id}"]
    if owner != PLATFORM_TENANT:
        streams.insert(0, f"schema-{owner}.{schema_id}")
    for stream in streams:
        events = [e for e in await ctx.service.log.read_stream(stream) if e.type == SCHEMA_REGISTERED]
        if not events:
            continue
        data = events[-1].data if isinstance(events[-1].data, dict) else {}
        document = data.get("document") if isinstance(data.get("document"), dict) else {}
        definition = document.get("definition", document) if isinstance(document, dict) else {}
        if isinstance(definition, dict):
            return definition, int(data.get("version") or len(events))
    return None


def _pointer(path: Any) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _validate(schema: dict[str, Any], document: Any) -> list[ValidationError]:
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    found = sorted(validator.iter_errors(document), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [ValidationError(path=_pointer(e.absolute_path), message=e.message[:500]) for e in found[:MAX_ERRORS]]


def install(ctx: StudioContext, blobs: Blobs) -> None:
    """Add ``POST /blobs/validate`` and ``POST /blobs/metadata``."""
    service = ctx.service

    def visible(info: KeyInfo, blob_id: str) -> Blob:
        blob = ctx.state.blobs.get(blob_id)
        if blob is None or not can_see(info, blob.owner):
            raise HTTPError(404, f"no blob {blob_id}")
        return blob

    @service.route(
        "POST",
        "/blobs/validate",
        summary="Validate a blob's content against a registered JSON Schema (seed 004's validate_blob step)",
        request=ValidateRequest,
        response=Validation,
        responses={
            400: "A malformed body, or a schema_id naming no schema of the caller or the platform",
            404: "No such blob (or another client's), or no such version",
        },
        tags=["blobs"],
        auth="client",
    )
    async def validate(request: web.Request) -> web.Response:
        """``valid`` false with the errors (each a JSON Pointer and a message) when the content
        breaks the schema or is not JSON; without ``schema_id``, whether the content is well
        formed for its content type. A deleted blob's content is still checked (its versions
        stay readable to its owner)."""
        info: KeyInfo = request[AUTH]
        body = await read_json(request, ValidateRequest)
        blob = visible(info, body.blob_id)
        data, version = await blobs.read(blob.blob_id, body.version)
        errors: list[ValidationError] = []
        document: Any = None
        kind = kind_of(version.content_type)
        try:
            if kind == "json":
                document = decode_json(data)
            elif kind == "text":
                data.decode("utf-8")
        except (ContentError, UnicodeDecodeError) as exc:
            errors.append(ValidationError(path="", message=f"content is not well formed: {exc}"))
        schema_version: int | None = None
        if body.schema_id is not None:
            if not _SCHEMA_ID.fullmatch(body.schema_id):
                raise HTTPError(400, f"schema_id {body.schema_id[:80]!r} is not a schema id", error="invalid_body")
            found = await load_schema(ctx, blob.owner, body.schema_id)
            if found is None:
                raise HTTPError(400, f"schema_id {body.schema_id!r} names no registered schema", error="unknown_schema")
            schema, schema_version = found
            if kind != "json":
                errors.append(ValidationError(path="", message=f"content of type {version.content_type} is not JSON"))
            elif not errors:
                try:
                    # Large documents are checked in a worker thread: the event loop keeps serving.
                    if version.size >= 64 * 1024:
                        errors = await asyncio.to_thread(_validate, schema, document)
                    else:
                        errors = _validate(schema, document)
                except jsonschema.SchemaError as exc:
                    raise HTTPError(
                        400, f"schema {body.schema_id!r} is not a valid JSON Schema: {exc.message}"
                    ) from None
        answer = Validation(
            valid=not errors,
            errors=errors,
            blob_id=blob.blob_id,
            version=version.version,
            schema_id=body.schema_id,
            schema_version=schema_version,
        )
        return json_response(answer)

    @service.route(
        "POST",
        "/blobs/metadata",
        summary="Extract facts about a blob (seed 004's extract_metadata step): content_type, size, checksum...",
        request=MetadataRequest,
        response=dict[str, Any],
        responses={
            400: "A malformed body or a field that cannot be extracted (the message names it)",
            404: "No such blob (or another client's), or no such version",
        },
        tags=["blobs"],
        auth="client",
    )
    async def metadata(request: web.Request) -> web.Response:
        """An object of the fields asked for (``checksum`` is ``sha256:<hex>``; ``metadata.<field>``
        a field of the version's metadata, null when absent); the content is read only for
        ``line_count`` and ``word_count`` of a text or JSON blob."""
        info: KeyInfo = request[AUTH]
        body = await read_json(request, MetadataRequest)
        blob = visible(info, body.blob_id)
        fields = body.extract_fields if body.extract_fields else _DEFAULT_FIELDS
        if len(fields) > 64:
            raise HTTPError(400, "extract_fields names at most 64 fields", error="invalid_body")
        for name in fields:
            if name not in METADATA_FIELDS and not (name.startswith("metadata.") and len(name) > len("metadata.")):
                raise HTTPError(
                    400,
                    f"extract_fields: {name[:80]!r} cannot be extracted "
                    f"(use {', '.join(METADATA_FIELDS)} or metadata.<field>)",
                    error="invalid_body",
                )
        version = blobs.version(blob.blob_id, body.version)
        text = ""
        if _COUNTED.intersection(fields) and kind_of(version.content_type) != "binary":
            data, _ = await blobs.read(blob.blob_id, version.version)
            text = data.decode("utf-8", errors="replace")
        facts: dict[str, Any] = {
            "id": blob.blob_id,
            "content_type": version.content_type,
            "size": version.size,
            "checksum": f"sha256:{version.sha256}",
            "sha256": version.sha256,
            "version": version.version,
            "created_at": blob.created_at,
            "updated_at": blob.updated_at,
            "parent_id": blob.parent_id,
            "owner": blob.owner,
            "deleted": blob.deleted,
            "metadata": version.metadata,
        }
        answer: dict[str, Any] = {}
        for name in fields:
            if name == "line_count":
                answer[name] = len(text.splitlines())
            elif name == "word_count":
                answer[name] = len(text.split())
            elif name.startswith("metadata."):
                answer[name] = version.metadata.get(name[len("metadata.") :])
            else:
                answer[name] = facts[name]
        return json_response(answer)
