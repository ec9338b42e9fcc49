"""Manifests, Merkle roots (RFC 6962) and inclusion proofs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.proof import (
    FileSource,
    Manifest,
    ManifestEntry,
    ProofError,
    RawSource,
    build_manifest,
    inclusion_proof,
    leaf_hash,
    manifest_of,
    merkle_root,
    node_hash,
    verify_inclusion_proof,
    verify_manifest,
)
from nexus.raw import open_raw


def rfc6962_mth(leaves: list[bytes]) -> bytes:
    """The recursive definition of RFC 6962 §2.1, as the reference."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962_mth(leaves[:k]) + rfc6962_mth(leaves[k:])).digest()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=40))
def test_merkle_root_matches_rfc6962(leaves: list[bytes]) -> None:
    assert merkle_root(leaves) == rfc6962_mth(leaves)


def test_leaves_and_nodes_are_domain_separated() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    # A two-leaf tree's root is not the hash of a leaf whose data is the two child hashes.
    assert node_hash(a, b) != leaf_hash(a + b)
    assert merkle_root([b"a", b"b"]) == node_hash(a, b)


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


async def test_file_manifest_verifies_and_reports_each_problem(tmp_path: Path) -> None:
    _write(tmp_path, {"data/summary.json": b'{"total": 3}', "data/events.json": b"[1,2,3]", "c.txt": b"c"})
    manifest = await manifest_of(FileSource(tmp_path))
    assert [e.path for e in manifest.entries] == ["c.txt", "data/events.json", "data/summary.json"]
    assert manifest.entries[0] == ManifestEntry("c.txt", 1, hashlib.sha256(b"c").hexdigest())
    assert (await verify_manifest(manifest, FileSource(tmp_path))).valid
    # Change one, delete one, add one: each is named.
    (tmp_path / "data/summary.json").write_bytes(b'{"total": 4}')
    (tmp_path / "c.txt").unlink()
    (tmp_path / "new.bin").write_bytes(b"x")
    result = await verify_manifest(manifest, FileSource(tmp_path))
    assert not result.valid
    assert sorted((p.kind, p.path) for p in result.problems) == [
        ("changed", "data/summary.json"),
        ("extra", "new.bin"),
        ("missing", "c.txt"),
    ]
    assert any(e.startswith("missing: c.txt") for e in result.errors)


async def test_a_forged_entry_list_breaks_the_root(tmp_path: Path) -> None:
    _write(tmp_path, {"a": b"1", "b": b"2"})
    manifest = await manifest_of(FileSource(tmp_path))
    (tmp_path / "a").write_bytes(b"9")
    forged_entry = ManifestEntry("a", 1, hashlib.sha256(b"9").hexdigest())
    forged = Manifest(created=manifest.created, root=manifest.root, entries=[forged_entry, manifest.entries[1]])
    result = await verify_manifest(forged, FileSource(tmp_path))
    assert [p.kind for p in result.problems] == ["root"]


async def test_raw_manifest_and_json_round_trip() -> None:
    raw = await open_raw("memory://")
    await raw.store("audit/1.json", b"one")
    await raw.store("audit/2.json", b"two")
    manifest = await manifest_of(RawSource(raw, "audit/"))
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert (await verify_manifest(again, RawSource(raw, "audit/"))).valid
    await raw.store("audit/2.json", b"TWO")
    assert [p.kind for p in (await verify_manifest(again, RawSource(raw, "audit/"))).problems] == ["changed"]
    with pytest.raises(ProofError):
        Manifest.from_json(b"{}")


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(ProofError, match="twice"):
        build_manifest([ManifestEntry("a", 1, "0" * 64), ManifestEntry("a", 2, "1" * 64)])


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13])
def test_inclusion_proofs_check_without_the_other_entries(count: int) -> None:
    entries = [ManifestEntry(f"f{i:02d}", i, hashlib.sha256(bytes([i])).hexdigest()) for i in range(count)]
    manifest = build_manifest(entries)
    for entry in entries:
        proof = inclusion_proof(manifest, entry.path)
        assert verify_inclusion_proof(proof, manifest.root)
        tampered = msgspec.structs.replace(proof, entry=ManifestEntry(entry.path, entry.size + 1, entry.sha256))
        assert not verify_inclusion_proof(tampered, manifest.root)
    other = build_manifest([*entries, ManifestEntry("zz", 0, "0" * 64)])
    assert not verify_inclusion_proof(inclusion_proof(manifest, entries[0].path), other.root)
    with pytest.raises(ProofError):
        inclusion_proof(manifest, "absent")
