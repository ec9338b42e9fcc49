"""Workflow and schema definitions: parsing (YAML or JSON), validation with every problem by path.

The workflow format is seed 004's, field for field (``id``, ``provider_id``, ``name``,
``description``, ``input_schema_id``, ``output_schema_id``, ``active``, ``steps`` with ``id``,
``name``, ``type``, ``service``, ``endpoint``, ``method``, ``input_map``, ``output_map``,
``condition``, ``variables``, ``compensation``, ``retry {max_attempts, backoff_ms}``,
``timeout_seconds``, ``on_failure``), plus:

- ``retry.multiplier`` (default 2), ``retry.max_backoff_ms`` (default 30000) and ``retry.jitter``
  (a fraction 0-1 of each delay drawn at random, default 0.1);
- workflow ``variables`` (seed 004: a mapping of names to constant JSON values, read in any
  mapping, condition or output as ``$.variables.<name>``; a path naming an undeclared variable is
  refused at registration) and ``max_retries`` (how many times an execution may be dispatched
  again after its driver stopped without finishing it, the default of each start's
  ``max_retries``; see ``engine``);
- workflow ``max_concurrent`` (executions of this workflow running at once, across replicas),
  ``timeout_seconds`` (the whole execution; TIMED_OUT past it) and ``output`` (a mapping over the
  execution context; by default the output of the last step that completed);
- ``type: task`` steps: ``service`` and ``command`` name the subject ``nexus.cmd.<service>.<command>``;
- ``type: wait_event`` steps: ``event`` (a CloudEvents type) and ``match`` (a condition over
  ``$.event`` and the context), bounded by ``timeout_seconds``.

Schemas are seed 004's format with a JSON Schema 2020-12 document under ``definition``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import jsonschema

from nexus.services.workflow.errors import DefinitionError, ExpressionError, Problem
from nexus.services.workflow.expressions import (
    Condition,
    Mapping_,
    compile_condition,
    compile_mapping,
    path_references,
)
from nexus.yamlsafe import YAMLInputError, load_yaml

__all__ = [
    "COMPENSATION_TYPES",
    "STEP_TYPES",
    "CompensationDefinition",
    "CompensationKind",
    "RetryPolicy",
    "SchemaDefinition",
    "StepDefinition",
    "StepKind",
    "WorkflowDefinition",
    "load_document",
    "parse_schema",
    "parse_workflow",
]

StepKind = Literal["api_call", "task", "wait_event"]
"""Every step type; each has one module in ``steps/`` registered under its name."""
CompensationKind = Literal["api_call", "task"]
"""The step types a compensation may be (it acts at once; it does not wait for an event)."""
STEP_TYPES: tuple[StepKind, ...] = get_args(StepKind)
COMPENSATION_TYPES: tuple[CompensationKind, ...] = get_args(CompensationKind)
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_CONTEXT_ROOTS = ("input", "steps", "execution", "provider_id", "workflow", "variables")
MAX_RETRIES_LIMIT = 1000
"""The largest ``max_retries`` a workflow or a start may ask for."""

_WORKFLOW_FIELDS = {
    "id",
    "provider_id",
    "name",
    "description",
    "input_schema_id",
    "output_schema_id",
    "active",
    "steps",
    "max_concurrent",
    "timeout_seconds",
    "output",
    "variables",
    "max_retries",
}
_STEP_FIELDS = {
    "id",
    "name",
    "type",
    "service",
    "endpoint",
    "method",
    "command",
    "event",
    "match",
    "input_map",
    "output_map",
    "condition",
    "variables",
    "compensation",
    "retry",
    "timeout_seconds",
    "on_failure",
}
_COMPENSATION_FIELDS = {"type", "service", "endpoint", "method", "command", "input_map", "retry", "timeout_seconds"}
_RETRY_FIELDS = {"max_attempts", "backoff_ms", "multiplier", "max_backoff_ms", "jitter"}
_SCHEMA_FIELDS = {"id", "provider_id", "name", "version", "type", "description", "definition"}


def load_document(document: str | bytes | Mapping[str, Any], what: str = "definition") -> dict[str, Any]:
    """A mapping from YAML or JSON text (JSON is YAML), or the mapping itself.

    Text goes through :func:`nexus.yamlsafe.load_yaml`: no anchors or aliases, and bounded in
    size, nesting and number of values, so a small document cannot expand into a huge one.

    Raises:
        DefinitionError: the text does not parse, is refused by the YAML limits, or is not a mapping.
    """
    if isinstance(document, Mapping):
        return dict(document)
    try:
        loaded = load_yaml(document, what=what)
    except YAMLInputError as exc:
        raise DefinitionError([("$", str(exc))]) from None
    if not isinstance(loaded, dict):
        raise DefinitionError([("$", f"the {what} must be a mapping, got {type(loaded).__name__}")])
    return loaded


@dataclass(frozen=True)
class RetryPolicy:
    """How a step (or a compensation) is retried after a retryable failure."""

    max_attempts: int = 3
    """Attempts in all, the first included."""
    backoff_ms: int = 500
    """Delay before the second attempt."""
    multiplier: float = 2.0
    """Each further delay is the previous one times this."""
    max_backoff_ms: int = 30_000
    """No delay is longer than this."""
    jitter: float = 0.1
    """Fraction of each delay drawn at random (0: none), so retries of many executions spread out."""

    def delay_ms(self, attempt: int, random: float) -> float:
        """Delay after failed attempt ``attempt`` (1-based); ``random`` is uniform in [0, 1)."""
        base = min(self.backoff_ms * self.multiplier ** (attempt - 1), self.max_backoff_ms)
        return base * (1 - self.jitter) + base * self.jitter * random


@dataclass(frozen=True)
class CompensationDefinition:
    """The action that undoes a completed step (saga)."""

    type: CompensationKind
    service: str
    endpoint: str
    method: str
    command: str
    input_map: Mapping_ | None
    retry: RetryPolicy
    timeout_seconds: float


@dataclass(frozen=True)
class StepDefinition:
    """One step of a workflow."""

    id: str
    name: str
    type: StepKind
    service: str
    endpoint: str
    method: str
    command: str
    event: str
    match: Condition | None
    input_map: Mapping_ | None
    output_map: Mapping_ | None
    condition: Condition | None
    variables: tuple[str, ...]
    compensation: CompensationDefinition | None
    retry: RetryPolicy
    timeout_seconds: float
    on_failure: str


@dataclass(frozen=True)
class WorkflowDefinition:
    """One version of a workflow, validated and compiled."""

    id: str
    version: int
    provider_id: str
    name: str
    description: str
    input_schema_id: str
    output_schema_id: str
    active: bool
    steps: tuple[StepDefinition, ...]
    max_concurrent: int | None
    timeout_seconds: float | None
    output: Mapping_ | None
    variables: dict[str, Any]
    """Constants every mapping reads as ``$.variables.<name>`` (pinned to this version)."""
    max_retries: int | None
    """Default ``max_retries`` of its executions (None: no limit)."""
    document: dict[str, Any] = field(repr=False)
    """The definition as registered (plain JSON), for the API and the log."""
    registered_at: str = ""

    def step(self, step_id: str) -> StepDefinition | None:
        for step in self.steps:
            if step.id == step_id:
                return step
        return None

    def to_json(self) -> dict[str, Any]:
        return {**self.document, "version": self.version, "registered_at": self.registered_at}


@dataclass(frozen=True)
class SchemaDefinition:
    """One version of a JSON schema (seed 004's format)."""

    id: str
    version: int
    provider_id: str
    name: str
    schema_version: str
    type: str
    description: str
    definition: dict[str, Any]
    validator: jsonschema.Draft202012Validator = field(repr=False, compare=False)
    document: dict[str, Any] = field(repr=False)
    registered_at: str = ""

    def errors(self, instance: Any, root: str = "$") -> list[Problem]:
        """Every (path, message) where ``instance`` fails the schema, in path order."""
        problems: list[Problem] = []
        for error in self.validator.iter_errors(instance):
            path = root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            message = error.message
            if error.validator == "required":
                missing = re.match(r"'([^']+)' is a required property", message)
                if missing:
                    path = f"{path}.{missing.group(1)}"
                    message = "is required"
            problems.append((path, message))
        return sorted(problems)

    def to_json(self) -> dict[str, Any]:
        return {**self.document, "registry_version": self.version, "registered_at": self.registered_at}


def _check_fields(doc: Mapping[str, Any], allowed: set[str], where: str, problems: list[Problem]) -> None:
    for key in doc:
        if key not in allowed:
            problems.append((f"{where}.{key}", f"unknown field (known: {', '.join(sorted(allowed))})"))


def _string(
    doc: Mapping[str, Any], key: str, where: str, problems: list[Problem], *, required: bool = False, default: str = ""
) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            problems.append((f"{where}.{key}", "is required"))
        return default
    if not isinstance(value, str):
        problems.append((f"{where}.{key}", f"must be a string, got {type(value).__name__}"))
        return default
    return value


def _number(
    doc: Mapping[str, Any],
    key: str,
    where: str,
    problems: list[Problem],
    *,
    default: float | None,
    minimum: float,
    maximum: float | None = None,
    integer: bool = False,
) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        problems.append((f"{where}.{key}", f"must be {'an integer' if integer else 'a number'}"))
        return default
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        problems.append((f"{where}.{key}", f"must be {bound}, got {value}"))
        return default
    return value


def _retry(doc: Any, where: str, problems: list[Problem]) -> RetryPolicy:
    if doc is None:
        return RetryPolicy()
    if not isinstance(doc, Mapping):
        problems.append((where, "must be a mapping with max_attempts, backoff_ms, multiplier, max_backoff_ms, jitter"))
        return RetryPolicy()
    _check_fields(doc, _RETRY_FIELDS, where, problems)
    base = RetryPolicy()
    return RetryPolicy(
        max_attempts=_number(doc, "max_attempts", where, problems, default=base.max_attempts, minimum=1, integer=True),
        backoff_ms=_number(doc, "backoff_ms", where, problems, default=base.backoff_ms, minimum=0, integer=True),
        multiplier=float(_number(doc, "multiplier", where, problems, default=base.multiplier, minimum=1)),
        max_backoff_ms=_number(
            doc, "max_backoff_ms", where, problems, default=base.max_backoff_ms, minimum=0, integer=True
        ),
        jitter=float(_number(doc, "jitter", where, problems, default=base.jitter, minimum=0, maximum=1)),
    )


class _References:
    """Checks what the JSONPaths of a step may refer to."""

    def __init__(self, problems: list[Problem], variables: Mapping[str, Any] | None = None) -> None:
        self.problems = problems
        self.variables = variables or {}

    def check(
        self, where: str, path: str, visible: set[str], all_steps: set[str], extra_roots: tuple[str, ...]
    ) -> None:
        try:
            names = path_references(path)
        except ExpressionError as exc:
            self.problems.append((where, str(exc)))
            return
        if not names:
            return
        roots = _CONTEXT_ROOTS + extra_roots
        if names[0] not in roots:
            self.problems.append(
                (where, f"JSONPath {path!r} starts at unknown ${'.' + names[0]} (the context has {', '.join(roots)})")
            )
            return
        if names[0] == "variables" and len(names) > 1 and names[1] not in self.variables:
            declared = ", ".join(sorted(self.variables)) or "none"
            self.problems.append(
                (where, f"JSONPath {path!r} refers to undeclared variable {names[1]!r} (declared: {declared})")
            )
        if names[0] == "steps" and len(names) > 1:
            step = names[1]
            if step not in all_steps:
                self.problems.append((where, f"JSONPath {path!r} refers to unknown step {step!r}"))
            elif step not in visible:
                self.problems.append((where, f"JSONPath {path!r} refers to step {step!r}, which runs later"))


def _mapping(value: Any, where: str, problems: list[Problem]) -> Mapping_ | None:
    if value is None:
        return None
    try:
        return compile_mapping(value, where)
    except ExpressionError as exc:
        problems.extend(exc.problems or [(where, str(exc))])
        # The well-formed paths are still checked, so one answer lists every problem.
        return Mapping_(lambda _data: None, tuple(exc.paths))


def _condition(value: Any, where: str, problems: list[Problem]) -> Condition | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        problems.append((where, "must be a string"))
        return None
    try:
        return compile_condition(value)
    except ExpressionError as exc:
        problems.append((where, f"malformed condition: {exc}"))
        return None


def _endpoint(value: str, where: str, problems: list[Problem]) -> None:
    if not value.startswith("/"):
        problems.append((where, f"must be a path starting with '/', got {value!r}"))
    for name in _PLACEHOLDER.findall(value):
        if not _ID.match(name):
            problems.append((where, f"placeholder {{{name}}} must name a field of the mapped input"))


def parse_workflow(
    document: str | bytes | Mapping[str, Any],
    *,
    version: int = 1,
    known_services: Callable[[str], bool] = lambda _name: True,
    known_schemas: Callable[[str], bool] = lambda _id: True,
    registered_at: str = "",
) -> WorkflowDefinition:
    """Validate and compile a workflow definition.

    Args:
        document: YAML or JSON text, or the mapping.
        version: the version this registration gets.
        known_services: whether an ``api_call`` service name resolves to a URL.
        known_schemas: whether a schema id is registered.

    Raises:
        DefinitionError: listing every problem by path.
    """
    doc = load_document(document, "workflow")
    problems: list[Problem] = []
    _check_fields(doc, _WORKFLOW_FIELDS, "$", problems)
    workflow_id = _string(doc, "id", "$", problems, required=True)
    if workflow_id and not _TOKEN.match(workflow_id):
        problems.append(("$.id", "must contain only letters, digits, '_' and '-'"))
    input_schema_id = _string(doc, "input_schema_id", "$", problems)
    output_schema_id = _string(doc, "output_schema_id", "$", problems)
    for key, schema_id in (("input_schema_id", input_schema_id), ("output_schema_id", output_schema_id)):
        if schema_id and not known_schemas(schema_id):
            problems.append((f"$.{key}", f"schema {schema_id!r} is not registered"))
    active = doc.get("active", True)
    if not isinstance(active, bool):
        problems.append(("$.active", "must be true or false"))
        active = True
    max_concurrent = _number(doc, "max_concurrent", "$", problems, default=None, minimum=1, integer=True)
    timeout_seconds = _number(doc, "timeout_seconds", "$", problems, default=None, minimum=0.001)
    max_retries = _number(
        doc, "max_retries", "$", problems, default=None, minimum=0, maximum=MAX_RETRIES_LIMIT, integer=True
    )
    variables = _variables(doc.get("variables"), problems)
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append(("$.steps", "must be a non-empty list of steps"))
        raw_steps = []
    all_ids = {s["id"] for s in raw_steps if isinstance(s, Mapping) and isinstance(s.get("id"), str)}
    refs = _References(problems, variables)
    seen: set[str] = set()
    steps: list[StepDefinition] = []
    for index, raw in enumerate(raw_steps):
        where = f"$.steps[{index}]"
        if not isinstance(raw, Mapping):
            problems.append((where, "must be a mapping"))
            continue
        step = _parse_step(raw, where, problems, seen, all_ids, refs, known_services)
        if step is not None:
            steps.append(step)
        if isinstance(raw.get("id"), str):
            seen.add(raw["id"])
    output = _mapping(doc.get("output"), "$.output", problems)
    if output is not None:
        for where, path in output.paths:
            refs.check(where, path, all_ids, all_ids, ())
    if problems:
        raise DefinitionError(problems)
    return WorkflowDefinition(
        id=workflow_id,
        version=version,
        provider_id=_string(doc, "provider_id", "$", problems),
        name=_string(doc, "name", "$", problems) or workflow_id,
        description=_string(doc, "description", "$", problems),
        input_schema_id=input_schema_id,
        output_schema_id=output_schema_id,
        active=active,
        steps=tuple(steps),
        max_concurrent=max_concurrent,
        timeout_seconds=timeout_seconds,
        output=output,
        variables=variables,
        max_retries=max_retries,
        document=json.loads(json.dumps(doc, default=str)),
        registered_at=registered_at,
    )


def _variables(raw: Any, problems: list[Problem]) -> dict[str, Any]:
    """The workflow's ``variables``: a mapping of identifiers to JSON values (a copy, plain JSON)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(("$.variables", f"must be a mapping of names to values, got {type(raw).__name__}"))
        return {}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _ID.match(name):
            problems.append(
                (
                    f"$.variables.{name}",
                    "a variable's name must start with a letter or '_' and contain only letters, digits, '_' and '-'",
                )
            )
            continue
        try:
            out[name] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            problems.append((f"$.variables.{name}", f"must be a JSON value, got {type(value).__name__}"))
    return out


def _parse_step(
    raw: Mapping[str, Any],
    where: str,
    problems: list[Problem],
    seen: set[str],
    all_ids: set[str],
    refs: _References,
    known_services: Callable[[str], bool],
) -> StepDefinition | None:
    _check_fields(raw, _STEP_FIELDS, where, problems)
    step_id = _string(raw, "id", where, problems, required=True)
    if step_id and not _ID.match(step_id):
        problems.append((f"{where}.id", "must start with a letter or '_' and contain only letters, digits, '_', '-'"))
    if step_id in seen:
        problems.append((f"{where}.id", f"duplicate step id {step_id!r}"))
    step_type = _string(raw, "type", where, problems, default="api_call")
    if step_type not in STEP_TYPES:
        problems.append((f"{where}.type", f"unknown step type {step_type!r} (use {', '.join(STEP_TYPES)})"))
    service = _string(raw, "service", where, problems, required=step_type in ("api_call", "task"))
    endpoint = _string(raw, "endpoint", where, problems, required=step_type == "api_call")
    method = _string(raw, "method", where, problems, default="POST").upper()
    command = _string(raw, "command", where, problems, required=step_type == "task")
    event = _string(raw, "event", where, problems, required=step_type == "wait_event")
    if step_type == "api_call":
        if service and not known_services(service):
            problems.append((f"{where}.service", f"unknown service {service!r}"))
        if endpoint:
            _endpoint(endpoint, f"{where}.endpoint", problems)
        if method not in _METHODS:
            problems.append((f"{where}.method", f"unknown method {method!r} (use {', '.join(_METHODS)})"))
    if step_type == "task":
        for key, value in (("service", service), ("command", command)):
            if value and not _TOKEN.match(value):
                problems.append((f"{where}.{key}", "must be a subject token (letters, digits, '_' and '-')"))
    on_failure = _string(raw, "on_failure", where, problems, default="fail")
    if on_failure not in ("fail", "continue"):
        problems.append((f"{where}.on_failure", f"must be 'fail' or 'continue', got {on_failure!r}"))
    variables = raw.get("variables") or []
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        problems.append((f"{where}.variables", "must be a list of strings"))
        variables = []
    timeout = _number(raw, "timeout_seconds", where, problems, default=30.0, minimum=0.001)
    retry = _retry(raw.get("retry"), f"{where}.retry", problems)
    visible = set(seen)
    input_map = _mapping(raw.get("input_map"), f"{where}.input_map", problems)
    output_map = _mapping(raw.get("output_map"), f"{where}.output_map", problems)
    condition = _condition(raw.get("condition"), f"{where}.condition", problems)
    match = _condition(raw.get("match"), f"{where}.match", problems)
    for mapping in (input_map,):
        if mapping is not None:
            for w, path in mapping.paths:
                refs.check(w, path, visible, all_ids, ())
    if condition is not None:
        for path in condition.paths:
            refs.check(f"{where}.condition", path, visible, all_ids, ())
    if match is not None:
        for path in match.paths:
            refs.check(f"{where}.match", path, visible, all_ids, ("event",))
    compensation = None
    raw_comp = raw.get("compensation")
    if raw_comp is not None:
        compensation = _parse_compensation(raw_comp, f"{where}.compensation", problems, visible | {step_id}, all_ids)
        if compensation is not None:
            c_where = f"{where}.compensation"
            if compensation.type == "api_call" and compensation.service and not known_services(compensation.service):
                problems.append((f"{c_where}.service", f"unknown service {compensation.service!r}"))
            if compensation.input_map is not None:
                for w, path in compensation.input_map.paths:
                    refs.check(w, path, visible | {step_id}, all_ids, ())
    return StepDefinition(
        id=step_id,
        name=_string(raw, "name", where, problems) or step_id,
        type=cast(StepKind, step_type),
        service=service,
        endpoint=endpoint,
        method=method,
        command=command,
        event=event,
        match=match,
        input_map=input_map,
        output_map=output_map,
        condition=condition,
        variables=tuple(variables),
        compensation=compensation,
        retry=retry,
        timeout_seconds=float(timeout),
        on_failure=on_failure,
    )


def _parse_compensation(
    raw: Any, where: str, problems: list[Problem], visible: set[str], all_ids: set[str]
) -> CompensationDefinition | None:
    if not isinstance(raw, Mapping):
        problems.append((where, "must be a mapping"))
        return None
    _check_fields(raw, _COMPENSATION_FIELDS, where, problems)
    comp_type = _string(raw, "type", where, problems, default="api_call")
    if comp_type not in COMPENSATION_TYPES:
        problems.append((f"{where}.type", f"must be 'api_call' or 'task', got {comp_type!r}"))
    service = _string(raw, "service", where, problems, required=True)
    endpoint = _string(raw, "endpoint", where, problems, required=comp_type == "api_call")
    method = _string(raw, "method", where, problems, default="POST").upper()
    command = _string(raw, "command", where, problems, required=comp_type == "task")
    if comp_type == "api_call":
        if endpoint:
            _endpoint(endpoint, f"{where}.endpoint", problems)
        if method not in _METHODS:
            problems.append((f"{where}.method", f"unknown method {method!r} (use {', '.join(_METHODS)})"))
    return CompensationDefinition(
        type=cast(CompensationKind, comp_type),
        service=service,
        endpoint=endpoint,
        method=method,
        command=command,
        input_map=_mapping(raw.get("input_map"), f"{where}.input_map", problems),
        retry=_retry(raw.get("retry"), f"{where}.retry", problems),
        timeout_seconds=float(_number(raw, "timeout_seconds", where, problems, default=30.0, minimum=0.001)),
    )


def parse_schema(
    document: str | bytes | Mapping[str, Any], *, version: int = 1, registered_at: str = ""
) -> SchemaDefinition:
    """Validate a schema document (seed 004's format, JSON Schema 2020-12 under ``definition``).

    Raises:
        DefinitionError: listing every problem by path.
    """
    doc = load_document(document, "schema")
    problems: list[Problem] = []
    _check_fields(doc, _SCHEMA_FIELDS, "$", problems)
    schema_id = _string(doc, "id", "$", problems, required=True)
    if schema_id and not _TOKEN.match(schema_id):
        problems.append(("$.id", "must contain only letters, digits, '_' and '-'"))
    schema_type = _string(doc, "type", "$", problems, default="input")
    if schema_type not in ("input", "output"):
        problems.append(("$.type", f"must be 'input' or 'output', got {schema_type!r}"))
    raw_version = doc.get("version", "")
    if raw_version is not None and not isinstance(raw_version, str | int | float):
        problems.append(("$.version", "must be a string"))
    definition = doc.get("definition")
    validator = None
    if not isinstance(definition, Mapping):
        problems.append(("$.definition", "is required: a JSON Schema (draft 2020-12) object"))
    else:
        declared = definition.get("$schema")
        if declared is not None and "2020-12" not in str(declared):
            problems.append(("$.definition.$schema", f"must be draft 2020-12, got {declared!r}"))
        for error in jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA).iter_errors(
            definition
        ):
            path = "$.definition" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            problems.append((path, error.message))
        if not problems:
            validator = jsonschema.Draft202012Validator(
                dict(definition), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
    if problems or validator is None:
        raise DefinitionError(problems)
    return SchemaDefinition(
        id=schema_id,
        version=version,
        provider_id=_string(doc, "provider_id", "$", problems),
        name=_string(doc, "name", "$", problems) or schema_id,
        schema_version=str(raw_version or ""),
        type=schema_type,
        description=_string(doc, "description", "$", problems),
        definition=dict(definition),  # type: ignore[arg-type]
        validator=validator,
        document=json.loads(json.dumps(doc, default=str)),
        registered_at=registered_at,
    )
