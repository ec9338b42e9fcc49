"""Deltas: applying the deltas of versions 2..n to version 1 gives version n, byte for byte."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus.proto.events.studio import Delta
from nexus.services.studio.content import canonical_json
from nexus.services.studio.deltas import (
    JSON_PATCH,
    REPLACE,
    TEXT_DIFF,
    DeltaError,
    PatchError,
    apply_deltas,
    apply_json_patch,
    compute_deltas,
)

JSON = "application/json"
TEXT = "text/markdown"
BINARY = "application/octet-stream"

# JSON documents with the values that trip a diff: 1, 1.0 and true are == in Python.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, -1.5, 2.5]),
    st.text(alphabet="ab~/ \u00e9", max_size=4),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(alphabet="ab~/0", max_size=3), children, max_size=5),
    ),
    max_leaves=25,
)
# Texts built from a few lines (so versions share some), with every kind of line ending.
lines = st.sampled_from(["alpha\n", "beta\n", "gamma\r\n", "delta", "\n", "é\n", "x\ry\n", "\u2028", ""])
texts = st.lists(lines, max_size=12).map("".join)


def chain(contents: list[bytes], content_type: str) -> tuple[list[list[Delta]], dict[str, bytes]]:
    """The deltas of each version after the first, as the studio records them, and the store a
    replace delta reads from."""
    store: dict[str, bytes] = {}
    recorded = []
    for old, new in itertools.pairwise(contents):
        digest = hashlib.sha256(new).hexdigest()
        ref = f"raw://t/acme/studio/sha256/{digest}"
        store[ref] = new
        recorded.append(compute_deltas(old, content_type, new, content_type, new_ref=ref, new_sha256=digest))
    return recorded, store


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(documents, min_size=1, max_size=6))
def test_json_deltas_reproduce_every_version(versions: list[Any]) -> None:
    contents = [canonical_json(v) for v in versions]
    recorded, store = chain(contents, JSON)
    for n in range(1, len(contents) + 1):
        # Version n from version 1 and the deltas of versions 2..n.
        assert apply_deltas(contents[0], *recorded[: n - 1], fetch=store.__getitem__) == contents[n - 1]
    for deltas, old, new in zip(recorded, contents, contents[1:], strict=False):
        # Unchanged content has no delta; a change is a patch (or a replace where a patch would
        # not reproduce it, never silently wrong).
        assert (deltas == []) == (old == new)
        assert all(d.kind in (JSON_PATCH, REPLACE) for d in deltas)


@settings(max_examples=300, deadline=None)
@given(st.lists(texts, min_size=1, max_size=6))
def test_text_deltas_reproduce_every_version(versions: list[str]) -> None:
    contents = [v.encode() for v in versions]
    recorded, _store = chain(contents, TEXT)
    assert all(d.kind == TEXT_DIFF for deltas in recorded for d in deltas)
    assert apply_deltas(contents[0], *recorded) == contents[-1]
    for n in range(1, len(contents) + 1):
        assert apply_deltas(contents[0], *recorded[: n - 1]) == contents[n - 1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=5))
def test_binary_deltas_are_replaces_that_reproduce(versions: list[bytes]) -> None:
    recorded, store = chain(versions, BINARY)
    assert all(d.kind == REPLACE for deltas in recorded for d in deltas)
    assert apply_deltas(versions[0], *recorded, fetch=store.__getitem__) == versions[-1]


def test_a_value_equal_in_python_but_not_in_json_is_not_lost() -> None:
    # In a list, make_patch sees 1 == True and writes no operation; the studio notices the
    # patch does not reproduce the version and records a replace.
    old, new = canonical_json({"a": [1, True]}), canonical_json({"a": [True, 1]})
    [delta] = compute_deltas(old, JSON, new, JSON, new_ref="raw://t/a/x", new_sha256="x")
    assert delta.kind == REPLACE
    assert apply_deltas(old, delta, fetch={"raw://t/a/x": new}.__getitem__) == new


def test_a_diff_larger_than_the_bound_is_a_replace() -> None:
    old = canonical_json({"items": list(range(100))})
    new = canonical_json({"items": [str(i) for i in range(100)]})
    [small] = compute_deltas(old, JSON, new, JSON, new_ref="raw://t/a/x", new_sha256="x", max_bytes=50)
    assert small.kind == REPLACE and small.operations[0]["size"] == len(new)
    [patch] = compute_deltas(old, JSON, new, JSON, new_ref="raw://t/a/x", new_sha256="x")
    assert patch.kind == JSON_PATCH
    # Content too large to diff quickly is a replace too.
    [big] = compute_deltas(b"a\n" * 10, TEXT, b"b\n" * 10, TEXT, new_ref="r", new_sha256="x", max_diff_bytes=8)
    assert big.kind == REPLACE


def test_a_change_of_kind_is_a_replace() -> None:
    [delta] = compute_deltas(b'{"a":1}', JSON, b"a\n", TEXT, new_ref="raw://t/a/y", new_sha256="y")
    assert delta.kind == REPLACE


def test_text_hunks_name_lines_of_the_previous_version() -> None:
    [delta] = compute_deltas(b"a\nb\nc\n", TEXT, b"a\nB\nc\nd\n", TEXT, new_ref="r", new_sha256="s")
    assert delta.operations == [{"at": 1, "delete": 1, "insert": ["B\n"]}, {"at": 3, "delete": 0, "insert": ["d\n"]}]


def test_deltas_applied_to_the_wrong_content_are_refused() -> None:
    hunk = Delta(kind=TEXT_DIFF, operations=[{"at": 5, "delete": 2, "insert": []}])
    with pytest.raises(DeltaError, match="does not fit a text of 1 lines"):
        apply_deltas(b"one line\n", hunk)
    with pytest.raises(DeltaError, match="JSON patch does not apply"):
        apply_deltas(b'{"a":1}', Delta(kind=JSON_PATCH, operations=[{"op": "remove", "path": "/b"}]))
    with pytest.raises(DeltaError, match="needs fetch"):
        apply_deltas(b"x", Delta(kind=REPLACE, operations=[{"content_ref": "raw://t/a/b", "size": 1, "sha256": "s"}]))
    with pytest.raises(DeltaError, match="unknown delta kind"):
        apply_deltas(b"x", Delta(kind="rot13", operations=[]))


@pytest.mark.parametrize(
    ("operations", "index", "reason"),
    [
        ([{"op": "add", "path": "/b", "value": 1}, {"op": "remove", "path": "/missing"}], 1, "non-existent"),
        ([{"op": "test", "path": "/a", "value": 2}], 0, "not equal"),
        ([{"op": "explode", "path": "/a"}], 0, "explode"),
        ([{"path": "/a"}], 0, "op"),
        (["not an object"], 0, "JSON object"),
        ([{"op": "add", "path": "no-slash", "value": 1}], 0, ""),
        ([{"op": "move", "from": "/a", "path": "/a/b"}], 0, ""),
    ],
)
def test_a_failing_patch_names_its_operation(operations: list[Any], index: int, reason: str) -> None:
    with pytest.raises(PatchError) as caught:
        apply_json_patch({"a": 1}, operations)
    assert caught.value.index == index
    assert f"operation {index}" in str(caught.value) and reason in str(caught.value)


def test_a_patch_leaves_its_document_alone() -> None:
    document = {"a": [1, 2]}
    patched = apply_json_patch(document, [{"op": "add", "path": "/a/-", "value": 3}])
    assert document == {"a": [1, 2]} and patched == {"a": [1, 2, 3]}
    assert msgspec.json.encode(patched) == b'{"a":[1,2,3]}'


def test_a_patch_writing_inside_a_value_it_added_is_recorded_as_sent() -> None:
    # jsonpatch inserts an operation's value as it is: without a copy, the second operation
    # would change the first one's value, and a replay of the recorded patch would add 1 twice.
    operations = [{"op": "add", "path": "/a", "value": []}, {"op": "add", "path": "/a/-", "value": 1}]
    patched = apply_json_patch({}, operations)
    assert patched == {"a": [1]} and operations[0]["value"] == []
    delta = Delta(kind=JSON_PATCH, operations=operations)
    assert apply_deltas(b"{}", delta) == b'{"a":[1]}'
    assert apply_deltas(b"{}", delta) == b'{"a":[1]}' and delta.operations[0]["value"] == []


def test_copies_that_would_outgrow_the_bound_are_refused_before_they_are_made() -> None:
    # Each copy doubles the document: thirty would make a billion elements.
    doubling = [{"op": "copy", "from": "/a", "path": "/a/0"}] * 30
    with pytest.raises(PatchError, match="copies add more than 10000 bytes") as caught:
        apply_json_patch({"a": [1]}, doubling, max_bytes=10_000)
    assert 5 < caught.value.index < 15
    # A few copies within the bound apply as any patch does.
    assert apply_json_patch({"a": [1]}, doubling[:2], max_bytes=10_000) == {"a": [[[1], 1], [1], 1]}
    with pytest.raises(PatchError, match="operation 0"):
        apply_json_patch({"a": [1]}, [{"op": "copy", "from": "/missing", "path": "/b"}], max_bytes=10)


def test_a_large_rewrite_of_a_text_is_one_hunk_between_its_common_head_and_tail() -> None:
    old = "title\n" + "".join(f"line {i}\n" for i in range(3000)) + "end\n"
    new = "title\n" + "".join(f"other {i}\n" for i in range(3000)) + "end\n"
    [delta] = compute_deltas(old.encode(), TEXT, new.encode(), TEXT, new_ref="r", new_sha256="s", max_bytes=10**6)
    [hunk] = delta.operations
    assert hunk["at"] == 1 and hunk["delete"] == 3000 and len(hunk["insert"]) == 3000
    assert apply_deltas(old.encode(), delta) == new.encode()
