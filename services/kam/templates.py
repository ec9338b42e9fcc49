"""KAM's templates: what an admin can assign to a request, and the workflow each one runs.

A template is a YAML (or JSON) document: a numeric ``id`` and a unique ``name`` (the seed's
``template_id: 5``, ``comprehensive_report_pipeline``), a ``tier``, the text a recommender
matches requests against (``description``, ``category``, ``keywords``), the ``workflow_id`` it
starts with its ``stages``, its ``parameters`` as a JSON Schema object with defaults, a cost
model, the deliverable it produces and the resources it asks for.

Templates are events (``KamTemplateRegistered`` in stream ``kam-templates``), folded into
``KamState.templates``. The bundled ones (``templates/*.yaml`` beside this module) are
registered at start, only when new or changed since their last bundled registration, so a
restart does not grow the log and an admin's later registration is not undone by a restart
that changes nothing. Admins register more with ``POST /api/templates``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.eventlog import ConcurrencyError, EventLog
from nexus.proto import PLATFORM_TENANT, new_event
from nexus.proto.events.kam import KamTemplateRegistered
from nexus.runtime import HTTPError, json_response
from nexus.services.kam.context import KamContext
from nexus.services.kam.state import TEMPLATE_REGISTERED, TEMPLATES_STREAM, KamState
from nexus.yamlsafe import YAMLInputError, load_yaml

__all__ = [
    "BUNDLED_TEMPLATES",
    "TIERS",
    "Template",
    "TemplateError",
    "apply_parameters",
    "catalogue_order",
    "estimated_cost",
    "find_template",
    "install",
    "parse_template",
    "read_directory",
    "register_bundled",
]

logger = logging.getLogger("nexus.kam.templates")

BUNDLED_TEMPLATES = Path(__file__).with_name("templates")
"""The templates every KAM registers at start."""

TIERS = ("basic", "standard", "premium")
"""Template tiers, cheapest first."""

Tier = Literal["basic", "standard", "premium"]
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{2,63}$")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Money = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
_WORKFLOW_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


class Cost(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a run costs the client: a fixed part, a part per 1,000 tokens and one per stage."""

    per_run: Money = 0.0
    per_1k_tokens: Money = 0.0
    per_stage: Money = 0.0
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "USD"
    """ISO 4217 code."""
    estimated_tokens: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] = 0
    """Tokens a typical run uses: what estimates before a run (recommendations) count on."""


class Deliverable(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the workflow's output becomes once the run completes."""

    type: Label
    """``report``, ``structure``, ``text`` …"""
    content_type: Label = "application/json"


class Resources(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the execution is granted (the seed's ``resources``)."""

    max_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    timeout_ms: Annotated[int, msgspec.Meta(ge=1000, le=86_400_000)] = 300_000


class Template(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A template document, as registered (unknown fields are refused)."""

    id: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
    """A number (the seed's ``template_id: 5``)."""
    name: Name
    """Unique among templates: lower-case letters, digits and ``_`` (``comprehensive_report_pipeline``)."""
    tier: Tier
    description: Text
    category: Label
    workflow_id: str
    """The platform workflow the template starts."""
    stages: Annotated[list[Label], msgspec.Meta(min_length=1, max_length=64)]
    """The workflow's stages, in order, as shown to people (each a step of the workflow)."""
    title: str = ""
    """How the template is shown (default: its name)."""
    keywords: Annotated[list[Label], msgspec.Meta(max_length=64)] = []
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    """A JSON Schema (2020-12) of type ``object``; each property's ``default`` fills a missing value."""
    cost: Cost = Cost()
    deliverable: Deliverable = Deliverable(type="report")
    resources: Resources = Resources()


class TemplateError(ValueError):
    """A template document is refused; ``field`` names where (``cost.per_run``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_template(document: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """Check a template document (YAML or JSON text, or a mapping) and return it normalised.

    Normalised: every field present, with its default when the document left it out.

    Raises:
        TemplateError: naming the first field at fault.
    """
    if isinstance(document, dict):
        loaded: Any = document
    else:
        try:
            loaded = load_yaml(document, what="template")
        except YAMLInputError as exc:
            raise TemplateError("$", str(exc)) from None
    if not isinstance(loaded, dict):
        raise TemplateError("$", f"a template is a mapping, got {type(loaded).__name__}")
    try:
        template = msgspec.convert(loaded, Template)
    except msgspec.ValidationError as exc:
        raise TemplateError(_field_of(str(exc)), str(exc)) from None
    if not _WORKFLOW_ID.match(template.workflow_id):
        raise TemplateError("workflow_id", "a workflow id: letters, digits, '_' and '-'")
    if len(set(template.stages)) != len(template.stages):
        raise TemplateError("stages", "each stage is named once")
    _check_parameters(template.parameters)
    normalised: dict[str, Any] = msgspec.to_builtins(template)
    normalised["title"] = template.title or template.name
    return normalised


def _field_of(message: str) -> str:
    """``cost.per_run`` from msgspec's ``… - at `$.cost.per_run```; unknown fields by their name."""
    unknown = re.search(r"unknown field `([^`]+)`", message)
    at = re.search(r"at `\$\.?([^`]*)`", message)
    if unknown:
        prefix = at.group(1) + "." if at and at.group(1) else ""
        return prefix + unknown.group(1)
    missing = re.search(r"missing required field `([^`]+)`", message)
    if missing:
        prefix = at.group(1) + "." if at and at.group(1) else ""
        return prefix + missing.group(1)
    return at.group(1) if at and at.group(1) else "$"


def _check_parameters(schema: dict[str, Any]) -> None:
    """The parameters schema is a valid 2020-12 object schema whose defaults satisfy it."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        raise TemplateError("parameters" + (f".{path}" if path else ""), exc.message) from None
    if schema.get("type") != "object":
        raise TemplateError("parameters.type", "the parameters schema is of type 'object'")
    try:
        apply_parameters(schema, {})
    except TemplateError as exc:
        raise TemplateError(
            "parameters", f"the defaults do not satisfy the schema ({exc}); give every required property a default"
        ) from None


def _with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with each missing property that has a ``default`` filled in, nested objects too."""
    if not isinstance(value, dict) or not isinstance(schema.get("properties"), dict):
        return value
    filled = dict(value)
    for name, sub in schema["properties"].items():
        if not isinstance(sub, dict):
            continue
        if name not in filled and "default" in sub:
            filled[name] = json.loads(json.dumps(sub["default"]))
        if name in filled:
            filled[name] = _with_defaults(sub, filled[name])
    return filled


def apply_parameters(schema: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` with the schema's defaults applied, once they satisfy the schema.

    Raises:
        TemplateError: the first problem, its field named ``parameters.<path>``.
    """
    filled = _with_defaults(schema, parameters)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(filled), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        error = errors[0]
        path = ".".join(str(p) for p in error.absolute_path)
        raise TemplateError("parameters" + (f".{path}" if path else ""), error.message)
    result: dict[str, Any] = filled
    return result


def estimated_cost(template: dict[str, Any]) -> float:
    """What a typical run of ``template`` costs: per run, per stage, and per 1,000 of its typical tokens."""
    cost = template.get("cost") or {}
    stages = len(template.get("stages") or [])
    amount = (
        float(cost.get("per_run", 0.0))
        + float(cost.get("per_stage", 0.0)) * stages
        + float(cost.get("per_1k_tokens", 0.0)) * float(cost.get("estimated_tokens", 0)) / 1000.0
    )
    return round(amount, 4)


def find_template(state: KamState, template_id: int | str | None, template_name: str | None) -> dict[str, Any]:
    """The template an assignment names: by id (a number or its text), else by name; both must agree.

    Raises:
        TemplateError: naming ``template_id`` or ``template_name`` when nothing (or two different
            templates) matches.
    """
    if template_id is None and not template_name:
        raise TemplateError("template_id", "name the template: template_id (its number) or template_name")
    found: dict[str, Any] | None = None
    if template_id is not None and not isinstance(template_id, bool):
        key = str(template_id).strip()
        found = state.templates.get(key) or _by_name(state, key)
        if found is None:
            raise TemplateError("template_id", f"no template with id or name {template_id!r}")
    if template_name:
        named = _by_name(state, template_name)
        if named is None:
            raise TemplateError("template_name", f"no template named {template_name!r}")
        if found is not None and named is not found:
            raise TemplateError(
                "template_name", f"{template_name!r} is not template {template_id!r} (that is {found['name']!r})"
            )
        found = named
    if found is None:
        raise TemplateError("template_id", "must be a number or a template's name")
    return found


def catalogue_order(template: dict[str, Any]) -> tuple[int, int, str]:
    """Sort key of templates: numeric ids in order, then any other id (registered by older tools)."""
    key = str(template.get("id"))
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _by_name(state: KamState, name: str) -> dict[str, Any] | None:
    return next((t for t in state.templates.values() if t.get("name") == name), None)


def _canonical(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _registration(template: dict[str, Any], by: str) -> Any:
    return new_event(
        TEMPLATE_REGISTERED,
        KamTemplateRegistered(template=template, registered_by=by),
        source="nexus/kam",
        subject=str(template["id"]),
        tenant=PLATFORM_TENANT,
    )


def read_directory(directory: Path) -> list[dict[str, Any]]:
    """Every ``*.yaml`` template of ``directory``, checked, in file-name order.

    Raises:
        TemplateError: a file is refused (its name leads the field).
    """
    documents: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.y*ml")):
        try:
            documents.append(parse_template(path.read_bytes()))
        except TemplateError as exc:
            raise TemplateError(f"{path.name}:{exc.field}", str(exc)) from None
    return documents


async def register_bundled(log: EventLog, directory: Path = BUNDLED_TEMPLATES) -> list[str]:
    """Register the templates of ``directory`` that are new or changed since their last bundled registration.

    Appends straight to the log (KAM folds its state after this, at start); replicas starting
    together are ordered by the stream's version, and each re-reads before retrying.

    Returns:
        The names registered now (unchanged ones are not).

    Raises:
        TemplateError: a file is refused (its name leads the field).
    """
    documents = await asyncio.to_thread(read_directory, directory)
    for _ in range(5):
        stored = await log.read_stream(TEMPLATES_STREAM)
        bundled: dict[str, str] = {}
        latest: dict[str, dict[str, Any]] = {}
        for event in stored:
            data = msgspec.convert(event.data, KamTemplateRegistered)
            key = str(data.template.get("id"))
            latest[key] = data.template
            if data.registered_by.startswith("bundled:"):
                bundled[key] = _canonical(data.template)
        names = {str(template.get("name")): key for key, template in latest.items()}
        fresh = []
        for document in documents:
            if bundled.get(str(document["id"])) == _canonical(document):
                continue
            owner = names.get(document["name"])
            if owner is not None and owner != str(document["id"]):
                # An admin gave the name to another template: theirs stays, this one is not offered.
                logger.error(
                    "bundled template %s not registered: template %s already has the name %r",
                    document["id"],
                    owner,
                    document["name"],
                )
                continue
            fresh.append(document)
        if not fresh:
            return []
        events = [_registration(d, f"bundled:{d['name']}") for d in fresh]
        try:
            await log.append(TEMPLATES_STREAM, events, expected_version=len(stored))
        except ConcurrencyError:
            continue
        return [d["name"] for d in fresh]
    raise TemplateError("$", "the bundled templates are being registered concurrently too often")


# -- HTTP -------------------------------------------------------------------------------------


class TemplateView(Template, frozen=True, kw_only=True):
    """A template as the API shows it: the document plus what a run is estimated to cost."""

    estimated_cost: float = 0.0
    """``cost.per_run + cost.per_stage × stages + cost.per_1k_tokens × cost.estimated_tokens / 1000``."""


class TemplateList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/templates``."""

    templates: list[TemplateView]


def view(template: dict[str, Any]) -> dict[str, Any]:
    """The API's view of a stored template document."""
    return {**template, "estimated_cost": estimated_cost(template)}


def install(ctx: KamContext) -> None:
    """Register the bundled templates at start, and serve the template routes."""
    service = ctx.service

    @service.on_startup
    async def bundled(service: Any) -> None:
        # Before the state is loaded (bootstrap loads it after every install), so it folds these.
        names = await register_bundled(service.log)
        logger.info("bundled templates registered: %s", ", ".join(names) or "none changed")

    @ctx.route(
        "GET",
        "/templates",
        summary="The templates (filter by tier)",
        response=TemplateList,
        query={"tier": "basic, standard or premium"},
        auth="client",
        scope="templates:read",
        tags=["templates"],
        responses={400: "Unknown tier"},
    )
    async def list_templates(request: web.Request) -> web.Response:
        """Every template, by id; ``tier`` keeps one tier."""
        tier = request.query.get("tier")
        if tier is not None and tier not in TIERS:
            raise HTTPError(400, f"tier: {tier!r} is not one of {', '.join(TIERS)}")
        found = sorted(ctx.state.templates.values(), key=catalogue_order)
        return json_response({"templates": [view(t) for t in found if tier is None or t["tier"] == tier]})

    @ctx.route(
        "GET",
        "/templates/{template_id}",
        summary="One template, by id or name",
        response=TemplateView,
        auth="client",
        scope="templates:read",
        tags=["templates"],
        responses={404: "No such template"},
    )
    async def get_template(request: web.Request) -> web.Response:
        """The template whose id (or name) the path gives."""
        key = request.match_info["template_id"]
        found = ctx.state.templates.get(key) or _by_name(ctx.state, key)
        if found is None:
            raise HTTPError(404, f"no template {key!r}")
        return json_response(view(found))

    @ctx.route(
        "POST",
        "/templates",
        summary="Register a template or a new version of one (admin; YAML or JSON)",
        request=Template,
        response=TemplateView,
        status=201,
        auth="client",
        scope="admin",
        tags=["templates"],
        responses={
            200: "The same id was registered before: this version replaces it (or it was unchanged)",
            400: "The document is refused (the message names the field), or its workflow is not registered",
            403: "Not an admin",
        },
    )
    async def post_template(request: web.Request) -> web.Response:
        """The body is the template document, YAML or JSON. A new id answers 201; a known id is replaced
        (200), unless the document is the same, which records nothing."""
        info: KeyInfo = request[AUTH]
        try:
            template = parse_template(await request.read())
        except TemplateError as exc:
            raise HTTPError(400, str(exc)) from None
        if not await service.log.stream_version(f"workflow-{template['workflow_id']}"):
            raise HTTPError(400, f"workflow_id: no platform workflow {template['workflow_id']!r} is registered")
        key = str(template["id"])
        named = _by_name(ctx.state, template["name"])
        if named is not None and str(named["id"]) != key:
            raise HTTPError(400, f"name: template {named['id']} already has the name {template['name']!r}")
        current = ctx.state.templates.get(key)
        if current is not None and _canonical(current) == _canonical(template):
            return json_response(view(current))
        try:
            await ctx.append(
                TEMPLATES_STREAM,
                [_registration(template, ctx.actor(info))],
                expected_version=await service.log.stream_version(TEMPLATES_STREAM),
            )
        except ConcurrencyError:
            raise HTTPError(409, "templates were registered concurrently; send it again") from None
        return json_response(view(ctx.state.templates[key]), status=200 if current is not None else 201)
