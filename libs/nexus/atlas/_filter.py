"""The Atlas filter language: dicts (or a Python builder) compiled to predicates.

A filter is one of::

    {"status": "RUNNING"}                          # shorthand for {"status": {"eq": "RUNNING"}}
    {"status": {"in": ["RUNNING", "QUEUED"]}}      # operators on a dotted field path
    {"cost.total": {"gte": 10, "lt": 20}}          # several operators on one field: all must hold
    {"and": [f1, f2]}, {"or": [f1, f2]}, {"not": f}
    {"field": "type", "operator": "eq", "value": "event"}   # seed 003's form, also accepted
    {} or None                                     # everything

Several keys in one dict are combined with ``and``. Operators: ``eq``, ``ne``, ``gt``, ``gte``,
``lt``, ``lte``, ``in``, ``nin``, ``contains`` (substring of a string, or element of a list),
``exists`` (true/false), ``prefix`` (string prefix). Paths are dotted; a numeric segment
indexes a list (``items.0.name``).

Comparison follows JSON, not Python: ``true`` never equals ``1``; ranges compare numbers with
numbers and strings with strings, never across; a missing field matches only ``ne``, ``nin``
and ``exists: false``. Indexed and unindexed queries give the same answers.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from nexus.atlas._errors import AtlasFilterError

OPERATORS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains", "exists", "prefix"})
RANGE_OPERATORS = frozenset({"gt", "gte", "lt", "lte"})

_MISSING: Any = object()
_canonical = msgspec.json.Encoder(order="sorted")

# Ranks order values of different JSON types in sorts and keep them apart in comparisons.
RANK_NULL, RANK_BOOL, RANK_NUMBER, RANK_STRING, RANK_OTHER = 0, 1, 2, 3, 4


def value_key(value: Any) -> tuple[int, Any]:
    """A hashable, totally ordered key with JSON equality (``True`` is not ``1``, ``1 == 1.0``)."""
    cls = type(value)
    if cls is str:
        return (RANK_STRING, value)
    if cls is int or cls is float:
        return (RANK_NUMBER, value)
    if cls is bool:
        return (RANK_BOOL, value)
    if value is None:
        return (RANK_NULL, 0)
    if isinstance(value, bool):
        return (RANK_BOOL, bool(value))
    if isinstance(value, int | float):
        return (RANK_NUMBER, value)
    if isinstance(value, str):
        return (RANK_STRING, str(value))
    try:
        return (RANK_OTHER, _canonical.encode(value))
    except (TypeError, ValueError):
        return (RANK_OTHER, repr(value).encode())


def get_path(data: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``data``, or the private MISSING marker."""
    for segment in path:
        if isinstance(data, dict):
            data = data.get(segment, _MISSING)
            if data is _MISSING:
                return _MISSING
        elif isinstance(data, list) and segment.isdigit():
            index = int(segment)
            if index >= len(data):
                return _MISSING
            data = data[index]
        else:
            return _MISSING
    return data


def is_missing(value: Any) -> bool:
    return value is _MISSING


# --------------------------------------------------------------------------- the filter tree


class Filter(abc.ABC):
    """A parsed filter; combine with ``&``, ``|`` and ``~``."""

    def matches(self, data: Any) -> bool:
        """Whether a view's data satisfies the filter."""
        return self.compile()(data)

    @abc.abstractmethod
    def compile(self) -> Callable[[Any], bool]:
        """A predicate over a view's data."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The filter in the dict language (round-trips through ``parse_filter``)."""

    def __and__(self, other: Filter) -> Filter:
        return And((self, other))

    def __or__(self, other: Filter) -> Filter:
        return Or((self, other))

    def __invert__(self) -> Filter:
        return Not(self)


@dataclass(frozen=True)
class Everything(Filter):
    """Matches every view."""

    def compile(self) -> Callable[[Any], bool]:
        return lambda data: True

    def to_dict(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Condition(Filter):
    """One operator applied to one field."""

    field: str
    op: str
    value: Any

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.field.split("."))

    def compile(self) -> Callable[[Any], bool]:
        path = self.path
        test = _operator(self.op, self.value, self.field)
        if len(path) == 1:
            name = path[0]

            def one(data: Any) -> bool:
                if type(data) is dict:
                    return test(data.get(name, _MISSING))
                return test(get_path(data, path))

            return one
        return lambda data: test(get_path(data, path))

    def to_dict(self) -> dict[str, Any]:
        return {self.field: {self.op: self.value}}


@dataclass(frozen=True)
class And(Filter):
    parts: tuple[Filter, ...]

    def compile(self) -> Callable[[Any], bool]:
        tests = [p.compile() for p in self.parts]
        return lambda data: all(t(data) for t in tests)

    def to_dict(self) -> dict[str, Any]:
        return {"and": [p.to_dict() for p in self.parts]}


@dataclass(frozen=True)
class Or(Filter):
    parts: tuple[Filter, ...]

    def compile(self) -> Callable[[Any], bool]:
        tests = [p.compile() for p in self.parts]
        return lambda data: any(t(data) for t in tests)

    def to_dict(self) -> dict[str, Any]:
        return {"or": [p.to_dict() for p in self.parts]}


@dataclass(frozen=True)
class Not(Filter):
    part: Filter

    def compile(self) -> Callable[[Any], bool]:
        test = self.part.compile()
        return lambda data: not test(data)

    def to_dict(self) -> dict[str, Any]:
        return {"not": self.part.to_dict()}


class FieldRef:
    """Builder for conditions on one field: ``where("status").eq("RUNNING")``."""

    def __init__(self, field: str) -> None:
        _check_field(field, field)
        self.field = field

    def eq(self, value: Any) -> Condition:
        return Condition(self.field, "eq", value)

    def ne(self, value: Any) -> Condition:
        return Condition(self.field, "ne", value)

    def gt(self, value: Any) -> Condition:
        return Condition(self.field, "gt", value)

    def gte(self, value: Any) -> Condition:
        return Condition(self.field, "gte", value)

    def lt(self, value: Any) -> Condition:
        return Condition(self.field, "lt", value)

    def lte(self, value: Any) -> Condition:
        return Condition(self.field, "lte", value)

    def isin(self, values: Iterable[Any]) -> Condition:
        return Condition(self.field, "in", list(values))

    def notin(self, values: Iterable[Any]) -> Condition:
        return Condition(self.field, "nin", list(values))

    def contains(self, value: Any) -> Condition:
        return Condition(self.field, "contains", value)

    def exists(self, flag: bool = True) -> Condition:
        return Condition(self.field, "exists", flag)

    def prefix(self, value: str) -> Condition:
        return Condition(self.field, "prefix", value)


def where(field: str) -> FieldRef:
    """Start a condition on a dotted field path: ``where("cost.total").gte(10)``."""
    return FieldRef(field)


def all_of(*filters: Filter) -> Filter:
    return And(tuple(filters))


def any_of(*filters: Filter) -> Filter:
    return Or(tuple(filters))


# --------------------------------------------------------------------------- parsing


def parse_filter(spec: Filter | Mapping[str, Any] | None) -> Filter:
    """Parse the dict language (or pass a built Filter through).

    Raises:
        AtlasFilterError: naming the place in the filter that is wrong.
    """
    return _parse(spec, "$")


def _parse(spec: Any, where_: str) -> Filter:
    if isinstance(spec, Filter):
        return spec
    if spec is None:
        return Everything()
    if not isinstance(spec, Mapping):
        raise AtlasFilterError(f"{where_}: a filter is a dict, got {type(spec).__name__}")
    keys = set(spec)
    if keys and keys <= {"field", "operator", "value"} and {"field", "operator"} <= keys:
        op = spec["operator"]
        if isinstance(op, str) and op in OPERATORS:
            field = spec["field"]
            _check_field(field, where_)
            return _condition(field, op, spec.get("value"), f"{where_}.value")
    parts: list[Filter] = []
    for key, value in spec.items():
        here = f"{where_}.{key}"
        if key in ("and", "or"):
            if not isinstance(value, list | tuple) or not value:
                raise AtlasFilterError(f"{here}: {key!r} takes a non-empty list of filters")
            children = tuple(_parse(v, f"{here}[{i}]") for i, v in enumerate(value))
            parts.append(And(children) if key == "and" else Or(children))
        elif key == "not":
            parts.append(Not(_parse(value, here)))
        else:
            _check_field(key, here)
            if isinstance(value, Mapping):
                if not value:
                    raise AtlasFilterError(
                        f"{here}: an empty operator dict; use {{'eq': {{}}}} to match an empty object"
                    )
                unknown = sorted(str(k) for k in value if k not in OPERATORS)
                if unknown:
                    raise AtlasFilterError(
                        f"{here}: unknown operator(s) {', '.join(unknown)}; "
                        f"use one of {', '.join(sorted(OPERATORS))} (to match an object, write {{'eq': {{...}}}})"
                    )
                for op, operand in value.items():
                    parts.append(_condition(key, op, operand, f"{here}.{op}"))
            else:
                parts.append(Condition(key, "eq", value))
    if not parts:
        return Everything()
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _check_field(field: Any, where_: str) -> None:
    if not isinstance(field, str) or not field or any(not s for s in field.split(".")):
        raise AtlasFilterError(f"{where_}: field path {field!r} must be a non-empty dotted name")


def _condition(field: str, op: str, value: Any, where_: str) -> Condition:
    if op in ("in", "nin") and not isinstance(value, list | tuple | set | frozenset):
        raise AtlasFilterError(f"{where_}: {op!r} takes a list of values")
    if op == "exists" and not isinstance(value, bool):
        raise AtlasFilterError(f"{where_}: 'exists' takes true or false")
    if op == "prefix" and not isinstance(value, str):
        raise AtlasFilterError(f"{where_}: 'prefix' takes a string")
    if op in RANGE_OPERATORS and value_key(value)[0] not in (RANK_NUMBER, RANK_STRING):
        raise AtlasFilterError(f"{where_}: {op!r} compares numbers or strings, got {value!r}")
    if op in ("in", "nin"):
        value = list(value)
    return Condition(field, op, value)


# --------------------------------------------------------------------------- operators


def _operator(op: str, operand: Any, field: str) -> Callable[[Any], bool]:
    if op == "eq":
        want = value_key(operand)
        return lambda v: v is not _MISSING and value_key(v) == want
    if op == "ne":
        want = value_key(operand)
        return lambda v: v is _MISSING or value_key(v) != want
    if op in ("in", "nin"):
        wanted = {value_key(x) for x in operand}
        if op == "in":
            return lambda v: v is not _MISSING and value_key(v) in wanted
        return lambda v: v is _MISSING or value_key(v) not in wanted
    if op in RANGE_OPERATORS:
        rank, bound = value_key(operand)
        compare: Callable[[Any], bool] = {
            "gt": lambda a: a > bound,
            "gte": lambda a: a >= bound,
            "lt": lambda a: a < bound,
            "lte": lambda a: a <= bound,
        }[op]

        def ranged(v: Any) -> bool:
            if v is _MISSING:
                return False
            r, value = value_key(v)
            return r == rank and compare(value)

        return ranged
    if op == "exists":
        return (lambda v: v is not _MISSING) if operand else (lambda v: v is _MISSING)
    if op == "prefix":
        return lambda v: isinstance(v, str) and v.startswith(operand)
    if op == "contains":
        want = value_key(operand)

        def contains(v: Any) -> bool:
            if isinstance(v, str):
                return isinstance(operand, str) and operand in v
            if isinstance(v, list):
                return any(value_key(x) == want for x in v)
            return False

        return contains
    raise AtlasFilterError(f"{field}: unknown operator {op!r}")
