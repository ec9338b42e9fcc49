"""Job payload types (seed 000): derived from a workflow's input schema, checked, built from records.

The server derives ``jobPayloadSchema`` and checks ``jobPayloadSchemaInstance`` with these
functions; the client builds instances with them, so both sides agree on every type.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

# The platform's one RFC 3339 parser (nexus.proto exports it once the lead adds the line).
from nexus.proto import parse_rfc3339

JOB_TYPES: Final = ("str", "float", "bool", "date", "object", "array", "file", "array_files")
"""Every job payload type, in the order of ARCHITECTURE.md's table."""

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?$")


class PayloadError(ValueError):
    """A job payload (or the schema it is derived from) is wrong.

    Attributes:
        problems: One ``(field, reason)`` per problem; ``field`` is the payload field's name.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))

    def as_json(self) -> dict[str, Any]:
        """The body of a 400 response: ``{"error": …, "problems": [{"field", "reason"}]}``."""
        return {
            "success": False,
            "error": f"invalid job payload: {self}",
            "problems": [{"field": f, "reason": r} for f, r in self.problems],
        }


@dataclass(frozen=True)
class PayloadField:
    """One field of a ``jobPayloadSchema``."""

    name: str
    type: str
    """One of JOB_TYPES."""
    required: bool = False
    description: str = ""
    schema: Mapping[str, Any] | None = None
    """The JSON Schema property it comes from (used to convert values back to the input)."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "required": self.required}
        if self.description:
            out["description"] = self.description
        return out


def _main_type(prop: Mapping[str, Any]) -> str | None:
    kind = prop.get("type")
    if isinstance(kind, list):
        # ["string", "null"] is an optional string: the non-null member decides.
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        if "properties" in prop:
            return "object"
        if "items" in prop:
            return "array"
    return kind if isinstance(kind, str) else None


def _is_file(prop: Mapping[str, Any]) -> bool:
    return _main_type(prop) == "string" and "contentMediaType" in prop


def job_type(prop: Mapping[str, Any]) -> str:
    """The job type of one JSON Schema property (ARCHITECTURE.md, "Job payload types").

    Raises:
        ValueError: the property has no type a job payload can carry.
    """
    kind = _main_type(prop)
    if kind == "string":
        if "contentMediaType" in prop:
            return "file"
        if prop.get("format") in ("date", "date-time"):
            return "date"
        return "str"
    if kind in ("number", "integer"):
        return "float"
    if kind == "boolean":
        return "bool"
    if kind == "object":
        return "object"
    if kind == "array":
        items = prop.get("items")
        if isinstance(items, Mapping) and _is_file(items):
            return "array_files"
        return "array"
    raise ValueError(
        f"type {prop.get('type')!r} has no job payload type (use string, number, integer, boolean, object or array)"
    )


def job_payload_schema(input_schema: Mapping[str, Any]) -> dict[str, PayloadField]:
    """The ``jobPayloadSchema`` of a workflow: one typed field per property of its input schema.

    Raises:
        PayloadError: the input schema is not an object schema, or a property has no job type.
    """
    if _main_type(input_schema) not in ("object", None) or not isinstance(input_schema.get("properties", {}), Mapping):
        raise PayloadError([("$", "the workflow's input schema is not an object schema with properties")])
    required = set(input_schema.get("required", ()))
    fields: dict[str, PayloadField] = {}
    problems: list[tuple[str, str]] = []
    for name, prop in input_schema.get("properties", {}).items():
        if not isinstance(prop, Mapping):
            problems.append((name, "the input schema's property is not an object"))
            continue
        try:
            kind = job_type(prop)
        except ValueError as exc:
            problems.append((name, str(exc)))
            continue
        fields[name] = PayloadField(
            name=name,
            type=kind,
            required=name in required,
            description=str(prop.get("description") or prop.get("title") or ""),
            schema=prop,
        )
    if problems:
        raise PayloadError(problems)
    return fields


def schema_from_json(doc: Mapping[str, Any]) -> dict[str, PayloadField]:
    """Read a ``jobPayloadSchema`` as served by ``GET /workflow/{id}`` (``{name: {type, required}}``).

    Raises:
        PayloadError: a field has no type or an unknown one.
    """
    out: dict[str, PayloadField] = {}
    problems: list[tuple[str, str]] = []
    for name, spec in doc.items():
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        if kind not in JOB_TYPES:
            problems.append((name, f"unknown job type {kind!r} (expected one of {', '.join(JOB_TYPES)})"))
            continue
        out[name] = PayloadField(
            name=name,
            type=kind,
            required=bool(spec.get("required", False)),
            description=str(spec.get("description", "")),
        )
    if problems:
        raise PayloadError(problems)
    return out


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}".lower()
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def is_date(value: Any) -> bool:
    """True for an ISO 8601 date (``2025-11-19``) or RFC 3339 date-time that really exists."""
    if not isinstance(value, str):
        return False
    if _DATE.match(value):
        try:
            _dt.date.fromisoformat(value)
        except ValueError:
            return False
        return True
    if _DATETIME.match(value):
        try:
            parse_rfc3339(value)
        except ValueError:
            return False
        return True
    return False


def _finite(number: float) -> bool:
    """Whether a number is finite as a float (an integer too large for one is not)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def check_value(kind: str, value: Any) -> str | None:
    """Why ``value`` is not a valid value of job type ``kind``, or None when it is."""
    if kind == "str":
        ok = isinstance(value, str)
        expected = "a string"
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
        expected = "a finite number"
    elif kind == "bool":
        ok = isinstance(value, bool)
        expected = "true or false"
    elif kind == "date":
        ok = is_date(value)
        expected = "an ISO 8601 date (YYYY-MM-DD) or RFC 3339 date-time"
    elif kind == "object":
        ok = isinstance(value, dict)
        expected = "an object"
    elif kind == "array":
        ok = isinstance(value, list)
        expected = "an array"
    elif kind == "file":
        ok = _is_url(value)
        expected = "a file URL (http or https)"
    elif kind == "array_files":
        if isinstance(value, list):
            bad = [i for i, item in enumerate(value) if not _is_url(item)]
            if bad:
                return f"item {bad[0]} is {_describe(value[bad[0]])}, expected a file URL (http or https)"
            return None
        ok = False
        expected = "an array of file URLs"
    else:
        return f"unknown job type {kind!r}"
    return None if ok else f"expected {expected}, got {_describe(value)}"


def _to_input(field: PayloadField, value: Any) -> Any:
    """Convert a checked payload value to what the workflow's input schema expects."""
    prop = field.schema or {}
    if field.type == "float" and _main_type(prop) == "integer" and float(value).is_integer():
        return int(value)
    if field.type == "date":
        fmt = prop.get("format")
        if fmt == "date" and not _DATE.match(value):
            return value[:10]
        if fmt == "date-time" and _DATE.match(value):
            return f"{value}T00:00:00Z"
    return value


def check_instance(schema: Mapping[str, PayloadField], instance: Any) -> dict[str, Any]:
    """Check a ``jobPayloadSchemaInstance`` against the schema and return the workflow input.

    Every field must be ``{"value": …, "type": …}`` with the schema's type and a value of that
    type; required fields must be present; unknown fields are refused.

    Raises:
        PayloadError: every problem, each naming its field.
    """
    if not isinstance(instance, Mapping):
        raise PayloadError([("jobPayloadSchemaInstance", f"expected an object, got {_describe(instance)}")])
    problems: list[tuple[str, str]] = []
    out: dict[str, Any] = {}
    for name, entry in instance.items():
        field = schema.get(name)
        if field is None:
            problems.append((name, f"not a field of this workflow's jobPayloadSchema (fields: {', '.join(schema)})"))
            continue
        if not isinstance(entry, Mapping) or "value" not in entry:
            problems.append((name, 'expected {"value": ..., "type": "' + field.type + '"}'))
            continue
        declared = entry.get("type", field.type)
        if declared != field.type:
            problems.append((name, f"declared type {declared!r} but the schema's type is {field.type!r}"))
            continue
        value = entry["value"]
        if value is None and not field.required:
            continue
        reason = check_value(field.type, value)
        if reason is not None:
            problems.append((name, f"{field.type}: {reason}"))
            continue
        out[name] = _to_input(field, value)
    for name, field in schema.items():
        if field.required and name not in instance:
            problems.append((name, f"required field of type {field.type} is missing"))
    if problems:
        raise PayloadError(problems)
    return out


def coerce(kind: str, value: Any) -> Any:
    """Convert a record's value to a value of job type ``kind`` where that is lossless.

    Numbers in strings become floats, ``date``/``datetime`` objects ISO strings, tuples and sets
    lists, a single file URL a one-element ``array_files``. Values that cannot be converted are
    returned unchanged, so ``check_value`` reports them.
    """
    if kind == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "date" and isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    if kind == "date" and isinstance(value, _dt.date):
        return value.isoformat()
    if kind in ("array", "array_files") and isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if kind == "array_files" and isinstance(value, str):
        return [value]
    if kind == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def build_instance(
    schema: Mapping[str, PayloadField],
    record: Mapping[str, Any],
    mapping: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Map a record's fields to a ``jobPayloadSchemaInstance``.

    Args:
        schema: The workflow's ``jobPayloadSchema``.
        record: The user's data, e.g. an anomaly.
        mapping: Payload field → record key; a payload field not named here takes the record's
            key of the same name. Record values are converted to the field's type (``coerce``).

    Raises:
        PayloadError: a required field has no value in the record, or a value has the wrong type.
    """
    mapping = dict(mapping or {})
    unknown = [name for name in mapping if name not in schema]
    problems: list[tuple[str, str]] = [(name, "mapped but not a field of the jobPayloadSchema") for name in unknown]
    instance: dict[str, dict[str, Any]] = {}
    for name, field in schema.items():
        key = mapping.get(name, name)
        if key not in record:
            if field.required:
                problems.append((name, f"required {field.type} field: the record has no {key!r}"))
            continue
        value = coerce(field.type, record[key])
        reason = check_value(field.type, value)
        if reason is not None:
            problems.append((name, f"{field.type} from record key {key!r}: {reason}"))
            continue
        instance[name] = {"value": value, "type": field.type}
    if problems:
        raise PayloadError(problems)
    return instance
