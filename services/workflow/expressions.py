"""Expressions in workflow definitions: JSONPath values, ``{$.path}`` templates and conditions.

JSONPath is RFC 9535, evaluated by the ``python-jsonpath`` library in strict mode. A mapping
value (``input_map``, ``output_map``) is evaluated recursively:

- a string that starts with ``$`` is a JSONPath: a singular path (no wildcard, slice, filter or
  descendant) gives its one value, or None when nothing matches; any other path gives the list
  of every match;
- a string that embeds ``{$.path}`` is a template: each placeholder becomes the value's text
  (strings as they are, everything else as JSON); ``{{`` and ``}}`` stand for literal braces;
- a string that starts with ``$$`` is the literal text after the first ``$``;
- mappings and lists are evaluated element by element; other values are literals.

Regular expressions (RFC 9535's ``match()``, a full match, and ``search()``, a partial one) run
on RE2 (``google-re2``), whose matching time is linear in the text: no pattern can backtrack for
seconds. A literal pattern RE2 refuses (a backreference, a look-around) makes the path malformed
when it is compiled; a pattern read from the data that RE2 refuses matches nothing, as RFC 9535
asks. Every query runs within a budget of :data:`MAX_NODES_VISITED` nodes (those its segments
select and those a descendant segment walks, embedded queries in filters included): a query over
a huge document fails with an ExpressionError naming the limit instead of holding the event loop.

A condition is a small expression language, parsed by a tokenizer and a recursive-descent
parser (never ``eval``)::

    expr       := or
    or         := and (("or" | "||") and)*
    and        := not (("and" | "&&") not)*
    not        := ("not" | "!") not | comparison
    comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") operand)?
    operand    := JSONPATH | NUMBER | STRING | true | false | null | "[" literals "]" | "(" expr ")"

Comparisons follow RFC 9535's filter semantics: ``==`` is deep equality (``1 == 1.0``, but
``true != 1``); ordering compares two numbers or two strings and is false otherwise; ``a in b``
is membership in a list or a substring test on strings. A lone operand is true when it is not
null, false, 0, an empty string, list or object.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonpath
import re2
from jsonpath.exceptions import JSONPathRecursionError
from jsonpath.filter import StringLiteral
from jsonpath.function_extensions import ExpressionType, FilterFunction
from jsonpath.match import JSONPathMatch
from jsonpath.segments import JSONPathChildSegment, JSONPathRecursiveDescentSegment, JSONPathSegment
from jsonpath.selectors import NameSelector
from jsonpath.token import Token

from nexus.services.workflow.errors import ExpressionError

__all__ = [
    "MAX_CONDITION_CHARS",
    "MAX_CONDITION_NESTING",
    "MAX_NODES_VISITED",
    "MAX_PATH_CHARS",
    "MAX_PATH_SEGMENTS",
    "REGEX_ENGINE",
    "Condition",
    "Mapping_",
    "compile_condition",
    "compile_mapping",
    "compile_path",
    "path_references",
    "template_paths",
]

MAX_NODES_VISITED = 50_000
"""Most nodes one JSONPath query may select or walk: about a tenth of a second of work at most."""

MAX_PATH_CHARS = 1024
"""Longest JSONPath accepted (each ``$...`` of a mapping, template or condition)."""
MAX_PATH_SEGMENTS = 64
"""Most segments in a JSONPath: each is a generator stacked on the previous one when it runs."""
MAX_CONDITION_CHARS = 4096
"""Longest condition accepted."""
MAX_CONDITION_NESTING = 32
"""Deepest nesting of ``not``, parentheses and lists in a condition."""

REGEX_ENGINE = re2
"""The engine behind ``match()`` and ``search()``: RE2, linear in the length of the text."""

_TEMPLATE = re.compile(r"\{(\$[^{}]*)\}")


# --- regular expressions on RE2 ---------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to the caller, not to stderr
# Memory for one compiled pattern and its DFA cache (RE2's default is 8 MiB): a pattern needing
# more is refused, and a search that fills the DFA cache carries on, still linear, without it.
_RE2_OPTIONS.max_mem = 1 << 20


def _iregexp_to_re2(pattern: str) -> str:
    """RFC 9485 (I-Regexp) to RE2: ``.`` outside a class matches any character but CR and LF."""
    parts: list[str] = []
    escaped = in_class = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        elif ch == "." and not in_class:
            parts.append("[^\\n\\r]")
            continue
        parts.append(ch)
    return "".join(parts)


@lru_cache(maxsize=128)
def _compile_regex(pattern: str) -> tuple[Any, str]:
    """The compiled RE2 pattern, or None and RE2's reason for refusing it."""
    try:
        return re2.compile(_iregexp_to_re2(pattern), _RE2_OPTIONS), ""
    except re2.error as exc:
        reason = exc.args[0] if exc.args else b""
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        return None, text or "not a regular expression RE2 accepts"


class _RE2Function(FilterFunction):
    """RFC 9535 ``match()`` (``full=True``) or ``search()`` on RE2."""

    arg_types = [ExpressionType.VALUE, ExpressionType.VALUE]
    return_type = ExpressionType.LOGICAL

    def __init__(self, *, full: bool) -> None:
        self.full = full

    def __call__(self, value: object, pattern: object) -> bool:
        if not isinstance(value, str) or not isinstance(pattern, str):
            return False
        compiled, _reason = _compile_regex(pattern)
        if compiled is None:
            return False  # RFC 9535: a pattern that is not valid matches nothing
        found = compiled.fullmatch(value) if self.full else compiled.search(value)
        return found is not None


# --- the node budget ----------------------------------------------------------------------------


class _Budget:
    __slots__ = ("left", "text")

    def __init__(self, text: str) -> None:
        self.left = MAX_NODES_VISITED
        self.text = text


_BUDGET: ContextVar[_Budget | None] = ContextVar("nexus_jsonpath_budget", default=None)


def _spend(nodes: int = 1) -> None:
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.left -= nodes
    if budget.left < 0:
        raise ExpressionError(
            f"JSONPath {budget.text!r} visits more than {MAX_NODES_VISITED} nodes of the document: "
            "it is too large for this query; select a narrower part of it"
        )


class _BudgetedChild(JSONPathChildSegment):
    """A child segment that charges every node it selects to the query's budget."""

    __slots__ = ()

    def resolve(self, nodes: Iterable[JSONPathMatch]) -> Iterable[JSONPathMatch]:
        for match in super().resolve(nodes):
            _spend()
            yield match


class _BudgetedDescendant(JSONPathRecursiveDescentSegment):
    """A descendant segment that charges every node it walks, and every node it selects."""

    __slots__ = ()

    def resolve(self, nodes: Iterable[JSONPathMatch]) -> Iterable[JSONPathMatch]:
        for node in nodes:
            for visited in self._walk(node, 1):
                for selector in self.selectors:
                    for match in selector.resolve(visited):
                        _spend()
                        yield match

    def _walk(self, node: JSONPathMatch, depth: int) -> Iterator[JSONPathMatch]:
        # The library's own traversal (depth first, pre-order, same limit), with each node charged.
        if depth > self.env.max_recursion_depth:
            raise JSONPathRecursionError("recursion limit exceeded", token=self.token)
        _spend()
        yield node
        obj = node.obj
        if isinstance(obj, Mapping):
            children: Iterable[tuple[Any, Any]] = obj.items()
        elif isinstance(obj, Sequence) and not isinstance(obj, str):
            children = enumerate(obj)
        else:
            return
        for key, value in children:
            if isinstance(value, Mapping | Sequence):
                yield from self._walk(node.new_child(value, key), depth + 1)

    def resolve_async(self, nodes: Any) -> Any:
        raise NotImplementedError("Nexus evaluates JSONPath synchronously, within a budget")


class _BudgetedParser(jsonpath.Parser):
    """The library's RFC 9535 parser, building budgeted segments (embedded queries included)."""

    def parse_query(self, stream: Any) -> Iterable[JSONPathSegment]:
        for segment in super().parse_query(stream):
            if isinstance(segment, JSONPathRecursiveDescentSegment):
                yield _BudgetedDescendant(env=segment.env, token=segment.token, selectors=segment.selectors)
            elif isinstance(segment, JSONPathChildSegment):
                yield _BudgetedChild(env=segment.env, token=segment.token, selectors=segment.selectors)
            else:
                yield segment


class _Environment(jsonpath.JSONPathEnvironment):
    """Strict RFC 9535, with ``match()``/``search()`` on RE2 and every query on a node budget."""

    parser_class = _BudgetedParser

    def setup_function_extensions(self) -> None:
        super().setup_function_extensions()
        self.function_extensions["match"] = _RE2Function(full=True)
        self.function_extensions["search"] = _RE2Function(full=False)

    def validate_function_extension_signature(self, token: Token, args: list[Any]) -> list[Any]:
        args = super().validate_function_extension_signature(token, args)
        if token.value in ("match", "search") and len(args) == 2 and isinstance(args[1], StringLiteral):
            compiled, reason = _compile_regex(args[1].value)
            if compiled is None:
                raise jsonpath.JSONPathTypeError(
                    f"{token.value}() pattern {args[1].value!r} is refused by RE2 ({reason}); "
                    "backreferences and look-around are not supported",
                    token=token,
                )
        return args


_ENV = _Environment(strict=True)


@lru_cache(maxsize=4096)
def compile_path(text: str) -> jsonpath.JSONPath:
    """Compile a JSONPath (cached).

    Raises:
        ExpressionError: the path is malformed (the message says where).
    """
    if len(text) > MAX_PATH_CHARS:
        raise ExpressionError(f"JSONPath {text[:40]!r}… is {len(text)} characters long; the limit is {MAX_PATH_CHARS}")
    try:
        path = _ENV.compile(text)
    except jsonpath.JSONPathError as exc:
        first = str(exc).splitlines()[0]
        raise ExpressionError(f"malformed JSONPath {text!r}: {first}") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # A number the parser cannot convert (thousands of digits), or nesting past Python's stack.
        raise ExpressionError(f"malformed JSONPath {text!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(path, jsonpath.JSONPath):
        # A compound query (union or intersection) is not RFC 9535.
        raise ExpressionError(f"malformed JSONPath {text!r}: not a single RFC 9535 query")
    if len(path.segments) > MAX_PATH_SEGMENTS:
        raise ExpressionError(
            f"JSONPath {text[:40]!r}… has {len(path.segments)} segments; the limit is {MAX_PATH_SEGMENTS}"
        )
    return path


def path_references(text: str) -> tuple[str, ...]:
    """The leading member names of a JSONPath (``$.steps.a.output`` → ``("steps", "a", "output")``).

    Stops at the first segment that is not a single name, so callers can check what a path
    refers to (``$.steps.<id>``) without evaluating it.
    """
    names: list[str] = []
    for segment in compile_path(text).segments:
        if not isinstance(segment, JSONPathChildSegment) or len(segment.selectors) != 1:
            break
        name = getattr(segment.selectors[0], "name", None)
        if not isinstance(name, str):
            break
        names.append(name)
    return tuple(names)


def _member_names(path: jsonpath.JSONPath) -> tuple[str, ...] | None:
    """The names of a path made only of single-name child segments (``$.data.workflow_id``), else None."""
    names: list[str] = []
    for segment in path.segments:
        if not isinstance(segment, JSONPathChildSegment) or len(segment.selectors) != 1:
            return None
        selector = segment.selectors[0]
        if not isinstance(selector, NameSelector):
            return None
        names.append(selector.name)
    return tuple(names)


def _lookup(names: tuple[str, ...], data: Any) -> Any:
    """``$.a.b`` by dictionary lookups: what the JSONPath query answers (None when a name is missing)."""
    for name in names:
        if not isinstance(data, Mapping) or name not in data:
            return None
        data = data[name]
    return data


def evaluator(path: jsonpath.JSONPath, text: str) -> Callable[[Any], Any]:
    """A function evaluating ``path`` (written ``text``) on a document.

    Most paths in workflows and triggers are plain member chains (``$.data.workflow_id``,
    ``$.steps.expand.output.text``); they are answered by dictionary lookups, about 40 times
    faster than the general query, which every other path goes through (with its node budget).
    """
    names = _member_names(path)
    if names is not None:
        return functools.partial(_lookup, names)
    return lambda data: _query(path, data, text)


def _query(path: jsonpath.JSONPath, data: Any, text: str) -> Any:
    """Evaluate ``path`` (written ``text``) on ``data``, within a fresh node budget."""
    if isinstance(data, str | bytes):
        # python-jsonpath reads a string document as JSON text to parse; here a string is a
        # value: ``$`` is the string itself, and no name or index selects anything in it.
        if not path.segments:
            return data if path.singular_query() else [data]
        return None if path.singular_query() else []
    reset = _BUDGET.set(_Budget(text))
    try:
        matches = path.findall(data)
    except RecursionError:
        raise ExpressionError(f"JSONPath {text!r}: the document nests too deeply to be read") from None
    finally:
        _BUDGET.reset(reset)
    if path.singular_query():
        return matches[0] if matches else None
    return matches


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def template_paths(text: str) -> list[str]:
    """The JSONPaths embedded as ``{$...}`` in a template string."""
    return _TEMPLATE.findall(text.replace("{{", "").replace("}}", ""))


Evaluator = Callable[[Any], Any]


def _compile_value(value: Any, where: str, problems: list[tuple[str, str]], paths: list[tuple[str, str]]) -> Evaluator:
    if isinstance(value, str):
        if value.startswith("$$"):
            literal = value[1:]
            return lambda _data: literal
        if value.startswith("$"):
            try:
                path = compile_path(value.strip())
            except ExpressionError as exc:
                problems.append((where, str(exc)))
                return lambda _data: None
            text = value.strip()
            paths.append((where, text))
            return evaluator(path, text)
        if "{$" in value:
            pieces: list[Any] = []
            position = 0
            protected = value.replace("{{", "\x00").replace("}}", "\x01")
            for match in _TEMPLATE.finditer(protected):
                pieces.append(protected[position : match.start()].replace("\x00", "{").replace("\x01", "}"))
                try:
                    embedded = match.group(1).strip()
                    pieces.append((compile_path(embedded), embedded))
                    paths.append((where, embedded))
                except ExpressionError as exc:
                    problems.append((where, str(exc)))
                    pieces.append("")
                position = match.end()
            pieces.append(protected[position:].replace("\x00", "{").replace("\x01", "}"))

            def render(data: Any) -> str:
                return "".join(p if isinstance(p, str) else _text(_query(p[0], data, p[1])) for p in pieces)

            return render
        return lambda _data: value
    if isinstance(value, Mapping):
        items = [(str(k), _compile_value(v, f"{where}.{k}", problems, paths)) for k, v in value.items()]
        return lambda data: {k: f(data) for k, f in items}
    if isinstance(value, list):
        elements = [_compile_value(v, f"{where}[{i}]", problems, paths) for i, v in enumerate(value)]
        return lambda data: [f(data) for f in elements]
    return lambda _data: value


@dataclass(frozen=True)
class Mapping_:
    """A compiled ``input_map`` / ``output_map`` (or any value with paths and templates)."""

    evaluate: Evaluator
    """Evaluate against a JSON document (the execution context, or a response body)."""
    paths: tuple[tuple[str, str], ...]
    """Every (where, JSONPath) it reads, for reference checks."""


def compile_mapping(value: Any, where: str = "$") -> Mapping_:
    """Compile a mapping value.

    Raises:
        ExpressionError: with every malformed path, one per line ("where: message").
    """
    problems: list[tuple[str, str]] = []
    paths: list[tuple[str, str]] = []
    evaluate = _compile_value(value, where, problems, paths)
    if problems:
        raise ExpressionError("\n".join(f"{w}: {m}" for w, m in problems), problems=problems, paths=paths)
    return Mapping_(evaluate, tuple(paths))


# --- conditions -------------------------------------------------------------------------------

_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ",")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_]+")


@dataclass(frozen=True)
class _Token:
    kind: str  # "path", "number", "string", "word", "op", "end"
    value: Any
    column: int


def _scan_path(text: str, start: int) -> int:
    """End of a JSONPath starting at ``start``: brackets and quotes balanced, then whitespace or an operator."""
    depth = 0
    quote: str | None = None
    i = start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and (ch.isspace() or ch in "=!<>&|,"):
            break
        i += 1
    return i


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "$":
            end = _scan_path(text, i)
            tokens.append(_Token("path", text[i:end], i))
            i = end
            continue
        if ch in "'\"":
            j = i + 1
            out: list[str] = []
            while j < len(text) and text[j] != ch:
                if text[j] == "\\" and j + 1 < len(text):
                    j += 1
                out.append(text[j])
                j += 1
            if j >= len(text):
                raise ExpressionError(f"unterminated string starting at column {i + 1}")
            tokens.append(_Token("string", "".join(out), i))
            i = j + 1
            continue
        number = _NUMBER.match(text, i)
        if number and (ch != "-" or not tokens or tokens[-1].kind == "op"):
            literal = number.group()
            try:
                value: Any = float(literal) if any(c in literal for c in ".eE") else int(literal)
            except ValueError:
                raise ExpressionError(f"the number at column {i + 1} has too many digits") from None
            tokens.append(_Token("number", value, i))
            i = number.end()
            continue
        word = _WORD.match(text, i)
        if word:
            if word.group() not in _KEYWORDS:
                raise ExpressionError(
                    f"unknown word {word.group()!r} at column {i + 1} "
                    "(use and, or, not, in, true, false, null, quoted strings or $-paths)"
                )
            tokens.append(_Token("word", word.group(), i))
            i = word.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                tokens.append(_Token("op", op, i))
                i += len(op)
                break
        else:
            raise ExpressionError(f"unexpected character {ch!r} at column {i + 1}")
    tokens.append(_Token("end", None, len(text)))
    return tokens


Node = Callable[[Any], Any]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.at = 0
        self.paths: list[str] = []
        self.depth = 0

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_CONDITION_NESTING:
            raise self.fail(f"the condition nests 'not', parentheses and lists deeper than {MAX_CONDITION_NESTING}")

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def accept(self, *values: str) -> bool:
        token = self.peek()
        if token.kind in ("op", "word") and token.value in values:
            self.at += 1
            return True
        return False

    def fail(self, message: str) -> ExpressionError:
        token = self.peek()
        found = "the end" if token.kind == "end" else repr(str(token.value))
        return ExpressionError(f"{message} at column {token.column + 1}, found {found}")

    def parse(self) -> Node:
        node = self.parse_or()
        if self.peek().kind != "end":
            raise self.fail("expected the end of the condition")
        return node

    def parse_or(self) -> Node:
        # A flat list, evaluated in a loop: a long chain of "or" does not nest calls.
        terms = [self.parse_and()]
        while self.accept("or", "||"):
            terms.append(self.parse_and())
        if len(terms) == 1:
            return terms[0]
        return lambda d: any(_truthy(term(d)) for term in terms)

    def parse_and(self) -> Node:
        terms = [self.parse_not()]
        while self.accept("and", "&&"):
            terms.append(self.parse_not())
        if len(terms) == 1:
            return terms[0]
        return lambda d: all(_truthy(term(d)) for term in terms)

    def parse_not(self) -> Node:
        if self.accept("not", "!"):
            self.enter()
            inner = self.parse_not()
            self.depth -= 1
            return lambda d: not _truthy(inner(d))
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        left = self.parse_operand()
        token = self.peek()
        if token.kind in ("op", "word") and token.value in ("==", "!=", "<", "<=", ">", ">=", "in"):
            self.take()
            right = self.parse_operand()
            compare = _COMPARE[token.value]
            return lambda d: compare(left(d), right(d))
        return left

    def parse_operand(self) -> Node:
        token = self.take()
        if token.kind == "path":
            try:
                path = compile_path(token.value)
            except ExpressionError as exc:
                raise ExpressionError(f"{exc} (column {token.column + 1})") from None
            text = token.value
            self.paths.append(text)
            return evaluator(path, text)
        if token.kind in ("number", "string"):
            value = token.value
            return lambda _d: value
        if token.kind == "word" and token.value in ("true", "false", "null"):
            constant = {"true": True, "false": False, "null": None}[token.value]
            return lambda _d: constant
        if token.kind == "op" and token.value == "(":
            self.enter()
            inner = self.parse_or()
            if not self.accept(")"):
                raise self.fail("expected ')'")
            self.depth -= 1
            return inner
        if token.kind == "op" and token.value == "[":
            self.enter()
            items: list[Node] = []
            if not self.accept("]"):
                while True:
                    items.append(self.parse_operand())
                    if self.accept("]"):
                        break
                    if not self.accept(","):
                        raise self.fail("expected ',' or ']' in a list")
            self.depth -= 1
            return lambda d: [item(d) for item in items]
        self.at -= 1
        raise self.fail("expected a value (a $-path, number, string, true, false, null, list or '(')")


def _truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return op(a, b)
        return False

    return compare


def _contains(a: Any, b: Any) -> bool:
    if isinstance(b, list):
        return any(_equal(a, item) for item in b)
    if isinstance(b, str) and isinstance(a, str):
        return a in b
    if isinstance(b, dict) and isinstance(a, str):
        return a in b
    return False


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": _ordered(lambda a, b: a < b),
    "<=": _ordered(lambda a, b: a <= b),
    ">": _ordered(lambda a, b: a > b),
    ">=": _ordered(lambda a, b: a >= b),
    "in": _contains,
}


@dataclass(frozen=True)
class Condition:
    """A compiled condition."""

    text: str
    """The source text."""
    paths: tuple[str, ...]
    """Every JSONPath it reads."""
    _node: Node

    def evaluate(self, data: Any) -> bool:
        """Whether the condition holds for ``data`` (the execution context).

        Raises:
            ExpressionError: a query exceeds its node budget, or the data nests too deeply to compare.
        """
        try:
            return _truthy(self._node(data))
        except RecursionError:
            raise ExpressionError(f"condition {self.text!r}: the data nests too deeply to compare") from None


@lru_cache(maxsize=1024)
def compile_condition(text: str) -> Condition:
    """Parse a condition.

    Raises:
        ExpressionError: the condition is malformed (the message says where and why).
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("a condition must be a non-empty string")
    if len(text) > MAX_CONDITION_CHARS:
        raise ExpressionError(f"the condition is {len(text)} characters long; the limit is {MAX_CONDITION_CHARS}")
    parser = _Parser(text)
    node = parser.parse()
    return Condition(text, tuple(parser.paths), node)
