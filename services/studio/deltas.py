"""Deltas: how one version of a blob becomes the next, computed when the version is written.

Three kinds (``nexus.proto.events.studio.Delta``):

- ``json-patch``: an RFC 6902 patch from ``jsonpatch.make_patch`` (or, for ``PATCH``, the
  client's own operations), applied to the canonical JSON of the previous version.
- ``text-diff``: line hunks ``{"at", "delete", "insert"}`` from ``difflib`` opcodes: at line
  ``at`` of the previous version (0-based, lines keep their endings), remove ``delete`` lines
  and put the ``insert`` lines there. Hunks are listed in order and apply from the last one
  back, so each ``at`` is an index into the previous version.
- ``replace``: ``[{"content_ref", "size", "sha256"}]``, the new content whole (in Raw). Used for
  binary content, a change of kind, a diff that would be larger than ``max_bytes`` (so no event
  outgrows the log's limit), content too large to diff quickly, and a JSON patch that would not
  reproduce the new version byte for byte (``make_patch`` compares with ``==``, so ``1`` → ``true``
  or ``1`` → ``1.0`` has no operation: each computed patch is checked by applying it).

``apply_deltas(content_v1, deltas)`` replays them: applying the deltas of versions 2..n to
version 1 gives version n exactly (the property tests show it for random documents and texts).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import jsonpointer  # type: ignore[import-untyped]
import msgspec

from nexus.proto.events.studio import Delta
from nexus.services.studio.content import ContentError, canonical_json, decode_json, kind_of

__all__ = [
    "JSON_PATCH",
    "MAX_COPY_BYTES",
    "REPLACE",
    "TEXT_DIFF",
    "DeltaError",
    "PatchError",
    "apply_deltas",
    "apply_json_patch",
    "compute_deltas",
    "replace_delta",
]

JSON_PATCH = "json-patch"
TEXT_DIFF = "text-diff"
REPLACE = "replace"

DEFAULT_MAX_DELTA_BYTES = 64 * 1024
"""Encoded deltas larger than this are recorded as a replace (the event stays small)."""
DEFAULT_MAX_DIFF_BYTES = 1024 * 1024
"""Content larger than this (either side) is not diffed: difflib and make_patch grow faster than
linearly, and a write must not stall the service."""

MAX_COPY_BYTES = 256 * 1024
"""What the ``copy`` operations of one JSON Patch may add in all, encoded (they are deep copies:
256 KiB of small values is some 50,000 objects, a few tens of milliseconds)."""

_encoder = msgspec.json.Encoder()


class DeltaError(ValueError):
    """Deltas that do not apply to the content they are given (not the version they came from)."""


class PatchError(ValueError):
    """A JSON Patch that cannot be applied; names the failing operation."""

    def __init__(self, index: int, operation: Any, reason: str) -> None:
        op = operation.get("op") if isinstance(operation, dict) else None
        path = operation.get("path") if isinstance(operation, dict) else None
        super().__init__(f"operation {index} ({op} {path}): {reason}")
        self.index = index
        self.operation = operation
        self.reason = reason


def replace_delta(content_ref: str, size: int, sha256: str) -> Delta:
    """A delta replacing the content whole with what ``content_ref`` holds."""
    return Delta(kind=REPLACE, operations=[{"content_ref": content_ref, "size": size, "sha256": sha256}])


def apply_json_patch(
    document: Any, operations: Any, *, copy: bool = True, max_bytes: int | None = MAX_COPY_BYTES
) -> Any:
    """``document`` with the RFC 6902 ``operations`` applied (``document`` is not changed unless
    ``copy`` is False: then it may be, and the result must be used instead).

    ``max_bytes`` bounds what ``copy`` operations may add (default :data:`MAX_COPY_BYTES`; None:
    no bound): each one can double a document, so thirty of them in a small patch would build a
    gigabyte. A patch whose copies add more than ``max_bytes`` in all, encoded, is refused before
    they are made (what other operations add is in the patch itself, so bounded by its size).

    Raises:
        PatchError: the patch is not a list of operations, or an operation is malformed or
            fails (a missing path, a failed ``test``) or copies too much; names the operation
            by index (-1 when ``copy`` is False: the document was changed by the operations
            before it).
    """
    if not isinstance(operations, list):
        raise PatchError(-1, None, "a JSON Patch is a JSON array of operations")
    for index, operation in enumerate(operations):
        if not isinstance(operation, dict):
            raise PatchError(index, operation, "an operation is a JSON object with op and path")
    if max_bytes is not None and any(operation.get("op") == "copy" for operation in operations):
        return _apply_with_copies(document, operations, max_bytes)
    # Copies of the operations: jsonpatch inserts an operation's value as it is, so a later
    # operation writing inside it would change the recorded patch too.
    own = msgspec.json.decode(_encoder.encode(operations))
    result = msgspec.json.decode(canonical_json(document)) if copy else document
    try:
        return jsonpatch.JsonPatch(own).apply(result, in_place=True)
    except _PATCH_ERRORS as exc:
        if not copy:
            raise PatchError(-1, None, _reason(exc)) from None
    # The patch failed somewhere: apply it again one operation at a time to name the one.
    result = msgspec.json.decode(canonical_json(document))
    for index, operation in enumerate(msgspec.json.decode(_encoder.encode(operations))):
        try:
            result = jsonpatch.JsonPatch([operation]).apply(result, in_place=True)
        except _PATCH_ERRORS as exc:
            raise PatchError(index, operation, _reason(exc)) from None
    raise PatchError(-1, None, "the patch does not apply")  # pragma: no cover - failed once, so fails again


def _apply_with_copies(document: Any, operations: list[Any], max_bytes: int) -> Any:
    """``apply_json_patch`` one operation at a time, counting the bytes each copy adds."""
    result = msgspec.json.decode(canonical_json(document))
    copied = 0
    for index, operation in enumerate(msgspec.json.decode(_encoder.encode(operations))):
        try:
            if operation.get("op") == "copy":
                source = jsonpointer.resolve_pointer(result, str(operation.get("from")))
                copied += len(_encoder.encode(source))
                if copied > max_bytes:
                    raise PatchError(index, operation, f"the patch's copies add more than {max_bytes} bytes")
            result = jsonpatch.JsonPatch([operation]).apply(result, in_place=True)
        except PatchError:
            raise
        except _PATCH_ERRORS as exc:
            raise PatchError(index, operation, _reason(exc)) from None
    return result


_PATCH_ERRORS = (
    jsonpatch.JsonPatchException,
    jsonpointer.JsonPointerException,
    # jsonpatch lets a few malformed operations through as Python errors.
    TypeError,
    KeyError,
    IndexError,
    ValueError,
    AttributeError,
    RecursionError,
)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, jsonpatch.JsonPatchException | jsonpointer.JsonPointerException):
        return str(exc)
    return f"malformed operation ({exc.__class__.__name__}: {exc})"


_DIFF_CELLS = 4_000_000
"""Above this many (old lines × new lines) between the common head and tail, the middle is one
hunk: difflib's matching can grow with the product, and a write must not stall the service."""


def _text_hunks(old: str, new: str) -> list[dict[str, Any]]:
    a = old.splitlines(keepends=True)
    b = new.splitlines(keepends=True)
    # The common head and tail cost a linear pass; only the middle is matched.
    head = 0
    while head < len(a) and head < len(b) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < len(a) - head and tail < len(b) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    a_mid, b_mid = a[head : len(a) - tail], b[head : len(b) - tail]
    if not a_mid and not b_mid:
        return []
    if len(a_mid) * len(b_mid) > _DIFF_CELLS:
        return [{"at": head, "delete": len(a_mid), "insert": b_mid}]
    hunks: list[dict[str, Any]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a_mid, b_mid, autojunk=False).get_opcodes():
        if tag != "equal":
            hunks.append({"at": head + i1, "delete": i2 - i1, "insert": b_mid[j1:j2]})
    return hunks


def _apply_hunks(text: str, hunks: list[Any]) -> str:
    lines = text.splitlines(keepends=True)
    for hunk in reversed(hunks):
        try:
            at, delete, insert = hunk["at"], hunk["delete"], hunk["insert"]
        except (KeyError, TypeError):
            raise DeltaError(f"text hunk {hunk!r} is not {{at, delete, insert}}") from None
        if (
            not isinstance(at, int)
            or not isinstance(delete, int)
            or not isinstance(insert, list)
            or at < 0
            or delete < 0
            or at + delete > len(lines)
        ):
            raise DeltaError(f"text hunk at line {at} deleting {delete} does not fit a text of {len(lines)} lines")
        lines[at : at + delete] = [str(line) for line in insert]
    return "".join(lines)


def compute_deltas(
    old: bytes,
    old_type: str,
    new: bytes,
    new_type: str,
    *,
    new_ref: str,
    new_sha256: str,
    max_bytes: int = DEFAULT_MAX_DELTA_BYTES,
    max_diff_bytes: int = DEFAULT_MAX_DIFF_BYTES,
    operations: list[Any] | None = None,
) -> list[Delta]:
    """The deltas from ``old`` to ``new`` (see the module); ``[]`` when the content is unchanged.

    ``operations``, for a JSON ``PATCH``, are the client's operations that made ``new`` from
    ``old``: recorded as they are instead of computing a patch.
    """
    if old == new and kind_of(old_type) == kind_of(new_type):
        return []
    kind = kind_of(new_type)
    replace = [replace_delta(new_ref, len(new), new_sha256)]
    if kind != kind_of(old_type) or kind == "binary" or max(len(old), len(new)) > max_diff_bytes:
        return replace
    delta: Delta
    if kind == "json":
        if operations is None:
            before = decode_json(old)
            patch = jsonpatch.make_patch(before, decode_json(new)).patch
            # make_patch compares with ==: in a list, 1 and true are "equal" to it. The patch is
            # kept only if it reproduces the new version's bytes exactly.
            try:
                if canonical_json(apply_json_patch(before, patch, copy=False)) != new:
                    return replace
            except (PatchError, ContentError):
                return replace
            operations = patch
        delta = Delta(kind=JSON_PATCH, operations=operations)
    else:
        delta = Delta(kind=TEXT_DIFF, operations=_text_hunks(old.decode("utf-8"), new.decode("utf-8")))
    if len(_encoder.encode(delta.operations)) > max_bytes:
        return replace
    return [delta]


def apply_deltas(
    content: bytes, *deltas: Delta | Iterable[Delta], fetch: Callable[[str], bytes] | None = None
) -> bytes:
    """Content ``content`` with ``deltas`` applied in order (each argument a delta or a list of
    them, e.g. the ``deltas`` of versions 2..n): version n's bytes, from version 1's.

    Args:
        content: The starting version's bytes.
        deltas: The deltas to apply, in version order.
        fetch: Gives the bytes of a ``raw://`` reference; needed only for ``replace`` deltas.

    Raises:
        DeltaError: a delta does not apply to the content it meets, or a replace needs ``fetch``.
    """
    flat: list[Delta] = []
    for item in deltas:
        if isinstance(item, Delta):
            flat.append(item)
        else:
            flat.extend(item)
    current = content
    # A run of JSON patches works on the decoded document, encoded once at its end.
    document: Any = None
    decoded = False
    for delta in flat:
        if delta.kind == JSON_PATCH:
            if not decoded:
                try:
                    document = decode_json(current)
                except ContentError as exc:
                    raise DeltaError(f"a JSON patch meets content that is not JSON: {exc}") from None
                decoded = True
            try:
                # The document is this function's own (decoded here): patched in place.
                document = apply_json_patch(document, delta.operations, copy=False)
            except PatchError as exc:
                raise DeltaError(f"JSON patch does not apply: {exc}") from None
            continue
        if decoded:
            current = canonical_json(document)
            decoded = False
        if delta.kind == TEXT_DIFF:
            try:
                text = current.decode("utf-8")
            except UnicodeDecodeError:
                raise DeltaError("a text diff meets content that is not UTF-8") from None
            current = _apply_hunks(text, delta.operations).encode("utf-8")
        elif delta.kind == REPLACE:
            if fetch is None:
                raise DeltaError("a replace delta needs fetch to read its content")
            [target] = delta.operations
            current = fetch(str(target["content_ref"]))
        else:
            raise DeltaError(f"unknown delta kind {delta.kind!r}")
    if decoded:
        current = canonical_json(document)
    return current
