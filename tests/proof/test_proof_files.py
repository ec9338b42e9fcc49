"""Manifests over a list of files (seed 003's ``buildManifest([path, …])``): relative paths, verified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nexus.hooks import FixedClock
from nexus.proof import (
    FileListSource,
    FileSource,
    ManifestEntry,
    ProofError,
    manifest_of,
    manifest_of_files,
    verify_manifest,
)


def _write(path: Path, content: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


async def test_named_files_get_paths_relative_to_their_common_directory(tmp_path: Path) -> None:
    summary = _write(tmp_path / "run" / "data" / "summary.json", b'{"totalEvents": 2}')
    events = _write(tmp_path / "run" / "data" / "events" / "all.json", b"[1, 2]")
    # A file beside them that is not named stays out of the manifest.
    _write(tmp_path / "run" / "data" / "scratch.txt", b"not part of it")
    manifest = await manifest_of_files([summary, events, summary], clock=FixedClock(0))
    assert [e.path for e in manifest.entries] == ["events/all.json", "summary.json"]
    assert manifest.entries[1] == ManifestEntry("summary.json", 18, hashlib.sha256(b'{"totalEvents": 2}').hexdigest())
    # No machine path is recorded anywhere in the manifest.
    assert str(tmp_path).encode() not in manifest.to_json()
    assert manifest.created == "1970-01-01T00:00:00.000000Z"
    # The same root as a folder manifest over exactly those files.
    folder = await manifest_of(FileSource(tmp_path / "run" / "data"), ["summary.json", "events/all.json"])
    assert folder.root == manifest.root

    # Verified against the same list: valid, though the directory holds another file.
    assert (await verify_manifest(manifest, FileListSource([summary, events]))).valid
    # Against the whole directory, the other file is extra unless allowed.
    whole = FileSource(tmp_path / "run" / "data")
    assert [p.kind for p in (await verify_manifest(manifest, whole)).problems] == ["extra"]
    assert (await verify_manifest(manifest, whole, allow_extra=True)).valid

    # A changed file and a file dropped from the list are each named.
    _write(tmp_path / "run" / "data" / "summary.json", b'{"totalEvents": 3}')
    result = await verify_manifest(manifest, FileListSource([summary], root=tmp_path / "run" / "data"))
    assert sorted((p.kind, p.path) for p in result.problems) == [
        ("changed", "summary.json"),
        ("missing", "events/all.json"),
    ]


async def test_an_explicit_root_and_a_single_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only = _write(tmp_path / "a" / "b" / "c.bin", b"x")
    assert [e.path for e in (await manifest_of_files([only])).entries] == ["c.bin"]
    assert [e.path for e in (await manifest_of_files([only], root=tmp_path)).entries] == ["a/b/c.bin"]
    # Relative paths are taken from the working directory.
    monkeypatch.chdir(tmp_path / "a")
    assert [e.path for e in (await manifest_of_files([Path("b/c.bin")], root=".")).entries] == ["b/c.bin"]


async def test_bad_lists_are_refused_naming_the_file(tmp_path: Path) -> None:
    inside = _write(tmp_path / "in" / "f.txt", b"f")
    outside = _write(tmp_path / "out" / "g.txt", b"g")
    with pytest.raises(ProofError, match="at least one file"):
        await manifest_of_files([])
    with pytest.raises(ProofError, match="not inside the manifest's root"):
        await manifest_of_files([inside, outside], root=tmp_path / "in")
    with pytest.raises(ProofError, match=r"missing\.txt.*does not exist"):
        await manifest_of_files([inside, str(tmp_path / "in" / "missing.txt")])
    (tmp_path / "in" / "sub").mkdir()
    with pytest.raises(ProofError, match="not a file"):
        await manifest_of_files([inside, str(tmp_path / "in" / "sub")])
