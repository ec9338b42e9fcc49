"""One YAML loader for every document the platform accepts: no aliases, and bounded.

PyYAML's ``safe_load`` expands aliases, so a few hundred bytes of anchors that refer to
each other ("billion laughs") become gigabytes of objects. Nexus definitions never need
anchors, so :func:`load_yaml` reads the parse events first and refuses any document that uses
an anchor (``&name``) or an alias (``*name``) before anything is built, and bounds what is left:

- the text: at most :data:`MAX_YAML_BYTES` (UTF-8 bytes);
- the nesting: at most :data:`MAX_YAML_DEPTH` levels of mappings and sequences;
- the size after parsing: at most :data:`MAX_YAML_NODES` values (scalars, mappings, sequences).

Without aliases the parsed document is no larger than its text, so these three bounds bound
the memory and time of a load. Every refusal is an :class:`UnsafeYAMLError` whose message
names the problem and where it is; text that is not YAML is an :class:`InvalidYAMLError`.
Both are :class:`YAMLInputError`, a ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "InvalidYAMLError",
    "UnsafeYAMLError",
    "YAMLInputError",
    "load_yaml",
]

MAX_YAML_BYTES = 1024 * 1024
"""Largest YAML text accepted, in UTF-8 bytes (a workflow definition is a few kilobytes)."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings and sequences accepted."""
MAX_YAML_NODES = 20_000
"""Most values (scalars, mappings and sequences) a document may hold once parsed.

The bundled definitions hold a few hundred each; building a value costs a few microseconds of
Python, so this bounds a load to well under a second even on a slow machine."""


class YAMLInputError(ValueError):
    """A YAML document was refused; the message says why."""


class InvalidYAMLError(YAMLInputError):
    """The text is not YAML (or JSON)."""


class UnsafeYAMLError(YAMLInputError):
    """The document uses an anchor or alias, or exceeds a size, depth or node limit."""


def _where(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    if mark is None:
        return ""
    return f" (line {mark.line + 1}, column {mark.column + 1})"


# libyaml's parser when PyYAML was built with it (it is, in the locked wheels): the pre-pass
# then costs C parsing plus one Python step per event; the pure-Python loader is the fallback.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_events(text: str, what: str) -> None:
    """Walk the document's parse events, refusing anchors, aliases, depth and node count past the limits.

    Events come before any node is composed or constructed, so a bomb is refused after reading
    its text once, never expanded.
    """
    depth = 0
    nodes = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, AliasEvent):
            raise UnsafeYAMLError(
                f"the {what} uses the YAML alias *{event.anchor}{_where(event)}; "
                "aliases and anchors are not accepted: write the value out"
            )
        if isinstance(event, NodeEvent):
            if event.anchor is not None:
                raise UnsafeYAMLError(
                    f"the {what} uses the YAML anchor &{event.anchor}{_where(event)}; "
                    "aliases and anchors are not accepted: write the value out"
                )
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise UnsafeYAMLError(f"the {what} holds more than {MAX_YAML_NODES} YAML values{_where(event)}")
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise UnsafeYAMLError(
                        f"the {what} nests mappings and sequences deeper than {MAX_YAML_DEPTH} levels{_where(event)}"
                    )
        elif isinstance(event, CollectionEndEvent):
            depth -= 1


def load_yaml(text: str | bytes, *, what: str = "document") -> Any:
    """Parse one YAML (or JSON) document without aliases, within the size, depth and node limits.

    Args:
        text: The document, as text or UTF-8 bytes.
        what: What the document is ("workflow", "trigger"…), for the error messages.

    Returns:
        The document as plain Python values (dicts, lists, str, int, float, bool, None…).

    Raises:
        UnsafeYAMLError: the text is too large, uses an anchor or alias, nests too deeply or
            holds too many nodes; the message names which, and where.
        InvalidYAMLError: the text is not UTF-8, not YAML, or holds more than one document.
    """
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > MAX_YAML_BYTES:
        raise UnsafeYAMLError(f"the {what} is {size} bytes long; the limit is {MAX_YAML_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidYAMLError(f"the {what} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        _check_events(text, what)
        # A SafeLoader: it builds plain values only, and the pre-pass refused aliases.
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise InvalidYAMLError(f"the {what} is not valid YAML or JSON: {exc}") from None
    except RecursionError:
        # Defence in depth: the depth limit stops composition long before Python's own limit.
        raise UnsafeYAMLError(f"the {what} nests too deeply to be read") from None
    except ValueError as exc:
        if isinstance(exc, YAMLInputError):
            raise
        # A scalar PyYAML cannot construct, e.g. an integer longer than Python converts (4300 digits).
        raise InvalidYAMLError(f"the {what} holds a value that cannot be read: {exc}") from None
