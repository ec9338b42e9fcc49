"""Manifests: each entry's path, size and sha256, and a Merkle root over them all."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from nexus.hooks import Clock, SystemClock
from nexus.proof._merkle import audit_path, leaf_hash, root_of_hashes, verify_inclusion
from nexus.raw import RawBackend, RawNotFoundError

ALGORITHM = "sha256+rfc6962"
"""sha256 content digests; RFC 6962 Merkle tree over the entries sorted by path."""
MANIFEST_FORMAT = "nexus.proof.manifest/1"


class ProofError(ValueError):
    """A manifest or proof is malformed (not a failed verification: that is a result)."""


class ManifestEntry(msgspec.Struct, frozen=True):
    path: str
    """Relative path (``/``-separated) of a file, or a Raw key."""
    size: int
    sha256: str
    """sha256 of the content, hex."""

    def leaf(self) -> bytes:
        """The Merkle leaf data: path, size and digest separated by NUL bytes."""
        return f"{self.path}\x00{self.size}\x00{self.sha256}".encode()


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """A manifest: entries sorted by path and the Merkle root over them."""

    format: str = MANIFEST_FORMAT
    algorithm: str = ALGORITHM
    created: str
    """When it was built, RFC 3339."""
    root: str
    """Merkle root (hex) over the entries' leaves, in path order."""
    entries: list[ManifestEntry]

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        try:
            manifest = msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise ProofError(f"not a manifest: {exc}") from None
        if manifest.format != MANIFEST_FORMAT or manifest.algorithm != ALGORITHM:
            raise ProofError(f"unsupported manifest {manifest.format!r} / {manifest.algorithm!r}")
        return manifest

    def entry(self, path: str) -> ManifestEntry | None:
        for entry in self.entries:
            if entry.path == path:
                return entry
        return None


class ManifestProblem(msgspec.Struct, frozen=True):
    kind: Literal["missing", "changed", "extra", "root"]
    path: str
    message: str


class ManifestVerification(msgspec.Struct, frozen=True):
    """``valid`` and one problem per missing, changed or extra entry (and a wrong root)."""

    valid: bool
    problems: list[ManifestProblem]

    @property
    def errors(self) -> list[str]:
        """The problems as sentences (seed 003's ``errors``)."""
        return [p.message for p in self.problems]


class InclusionProof(msgspec.Struct, frozen=True):
    """Shows that one entry is in a manifest with a given root, without the other entries."""

    entry: ManifestEntry
    index: int
    tree_size: int
    path: list[str]
    """Sibling hashes (hex), leaf to root."""
    root: str


class ManifestSource(Protocol):
    """Where entries live: a directory of files or a Raw store."""

    async def paths(self) -> list[str]:
        """Every path the source holds (for the ``extra`` check)."""
        ...

    async def describe(self, path: str) -> tuple[int, str] | None:
        """Size and sha256 of ``path``, or None when it does not exist."""
        ...


class FileSource:
    """Files under a directory; paths are relative to it. ``exclude`` names paths to skip."""

    def __init__(self, root: str | os.PathLike[str], *, exclude: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.exclude = set(exclude)

    async def paths(self) -> list[str]:
        return await asyncio.to_thread(self._paths)

    def _paths(self) -> list[str]:
        out = []
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                rel = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if rel not in self.exclude:
                    out.append(rel)
        return sorted(out)

    async def describe(self, path: str) -> tuple[int, str] | None:
        return await asyncio.to_thread(self._describe, path)

    def _describe(self, path: str) -> tuple[int, str] | None:
        target = self.root / path
        try:
            h = hashlib.sha256()
            size = 0
            with open(target, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return size, h.hexdigest()


class FileListSource:
    """Named files (seed 003's ``buildManifest([path, …])``); paths are relative to ``root``.

    ``root`` defaults to the deepest directory that holds every file, so a manifest over
    ``/data/run/summary.json`` and ``/data/run/events/1.json`` names ``summary.json`` and
    ``events/1.json``: it never records where the files sat on the machine that built it.
    The source holds exactly the listed files, so a manifest built from it verifies against it
    without an ``extra`` problem for the other files of the directory; a path that is not in
    the list is described as missing, whatever lies on disk.

    Args:
        files: The files, absolute or relative to the working directory (duplicates count once).
        root: The directory the manifest's paths are relative to; every file must be inside it.

    Raises:
        ProofError: no files, or a file outside ``root``.
    """

    def __init__(self, files: Iterable[str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None) -> None:
        absolute = sorted({os.path.abspath(f) for f in files})
        if not absolute:
            raise ProofError("a manifest over a list of files needs at least one file")
        base = os.path.abspath(root) if root is not None else os.path.commonpath([os.path.dirname(f) for f in absolute])
        self.root = Path(base)
        self._files: dict[str, Path] = {}
        for path in absolute:
            if os.path.commonpath([base, path]) != base or path == base:
                raise ProofError(f"{path!r} is not inside the manifest's root {base!r}")
            self._files[Path(path).relative_to(base).as_posix()] = Path(path)
        self._reader = FileSource(self.root)

    async def paths(self) -> list[str]:
        return sorted(self._files)

    async def describe(self, path: str) -> tuple[int, str] | None:
        if path not in self._files:
            return None
        return await self._reader.describe(path)


class RawSource:
    """Blobs in a Raw store under ``prefix``; paths are their keys.

    ``trust_stat`` uses the digests the backend recorded instead of reading every blob.
    """

    def __init__(self, raw: RawBackend, prefix: str = "", *, trust_stat: bool = False) -> None:
        self.raw = raw
        self.prefix = prefix
        self.trust_stat = trust_stat

    async def paths(self) -> list[str]:
        return await self.raw.list_all(self.prefix)

    async def describe(self, path: str) -> tuple[int, str] | None:
        try:
            if self.trust_stat:
                stat = await self.raw.stat(path)
                return stat.size, stat.sha256
            data = await self.raw.retrieve(path)
        except RawNotFoundError:
            return None
        return len(data), hashlib.sha256(data).hexdigest()


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_entries(entries: Iterable[ManifestEntry]) -> list[ManifestEntry]:
    ordered = sorted(entries, key=lambda e: e.path)
    for before, after in itertools.pairwise(ordered):
        if before.path == after.path:
            raise ProofError(f"path {after.path!r} appears twice in the manifest")
    for entry in ordered:
        if "\x00" in entry.path or not entry.path:
            raise ProofError(f"manifest path {entry.path!r} is empty or contains NUL")
    return ordered


def root_of(entries: Sequence[ManifestEntry]) -> str:
    """The Merkle root (hex) over entries already sorted by path."""
    return root_of_hashes([leaf_hash(e.leaf()) for e in entries]).hex()


def build_manifest(entries: Iterable[ManifestEntry], *, clock: Clock | None = None) -> Manifest:
    """A manifest over ``entries`` (any order; they are sorted by path).

    Raises:
        ProofError: a path appears twice or is empty.
    """
    ordered = _check_entries(entries)
    return Manifest(created=_rfc3339((clock or SystemClock()).now()), root=root_of(ordered), entries=ordered)


async def manifest_of(
    source: ManifestSource, paths: Iterable[str] | None = None, *, clock: Clock | None = None
) -> Manifest:
    """Describe ``paths`` (default: everything in ``source``) and build their manifest.

    Raises:
        ProofError: a named path does not exist in the source.
    """
    wanted = sorted(set(paths)) if paths is not None else await source.paths()
    entries = []
    for path in wanted:
        described = await source.describe(path)
        if described is None:
            raise ProofError(f"{path!r} does not exist or is not a file, so it cannot go into a manifest")
        entries.append(ManifestEntry(path, described[0], described[1]))
    return build_manifest(entries, clock=clock)


async def manifest_of_files(
    files: Iterable[str | os.PathLike[str]],
    *,
    root: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
) -> Manifest:
    """A manifest over named files, their paths relative to ``root`` (default: their common directory).

    Seed 003's ``buildManifest([...paths])``. Verify it with the same list
    (``verify_manifest(m, FileListSource(files))``) or against the whole directory
    (``verify_manifest(m, FileSource(root), allow_extra=True)``).

    Raises:
        ProofError: no files, a file outside ``root``, or a file that does not exist (or is a directory).
    """
    return await manifest_of(FileListSource(files, root=root), clock=clock)


async def verify_manifest(
    manifest: Manifest, source: ManifestSource, *, allow_extra: bool = False
) -> ManifestVerification:
    """Check every entry against ``source``: present, same size, same sha256; nothing extra.

    Args:
        manifest: What was recorded.
        source: Where the entries are now.
        allow_extra: Do not report paths the source holds beyond the manifest.
    """
    problems: list[ManifestProblem] = []
    try:
        ordered = _check_entries(manifest.entries)
        if root_of(ordered) != manifest.root:
            problems.append(
                ManifestProblem("root", "", f"the manifest's root {manifest.root} does not match its own entries")
            )
    except ProofError as exc:
        problems.append(ManifestProblem("root", "", str(exc)))
        ordered = list(manifest.entries)
    for entry in ordered:
        described = await source.describe(entry.path)
        if described is None:
            problems.append(ManifestProblem("missing", entry.path, f"missing: {entry.path}"))
        elif described != (entry.size, entry.sha256):
            size, digest = described
            problems.append(
                ManifestProblem(
                    "changed",
                    entry.path,
                    f"changed: {entry.path} (size {entry.size} -> {size}, sha256 {entry.sha256[:12]} -> {digest[:12]})",
                )
            )
    if not allow_extra:
        known = {e.path for e in ordered}
        for path in await source.paths():
            if path not in known:
                problems.append(ManifestProblem("extra", path, f"extra: {path} is not in the manifest"))
    return ManifestVerification(not problems, problems)


def inclusion_proof(manifest: Manifest, path: str) -> InclusionProof:
    """The audit path showing that ``path``'s entry is in ``manifest``.

    Raises:
        ProofError: the manifest has no entry for ``path``.
    """
    ordered = _check_entries(manifest.entries)
    for index, entry in enumerate(ordered):
        if entry.path == path:
            hashes = [leaf_hash(e.leaf()) for e in ordered]
            siblings = [h.hex() for h in audit_path(hashes, index)]
            return InclusionProof(entry, index, len(ordered), siblings, manifest.root)
    raise ProofError(f"the manifest has no entry {path!r}")


def verify_inclusion_proof(proof: InclusionProof, root: str | None = None) -> bool:
    """Whether ``proof`` shows its entry under ``root`` (default: the root the proof names).

    Pass the root you trust (from a seal or a signed manifest): a proof checked only against
    its own root proves nothing about which manifest it came from.
    """
    try:
        siblings = [bytes.fromhex(h) for h in proof.path]
        expected = bytes.fromhex(root if root is not None else proof.root)
    except ValueError:
        return False
    return verify_inclusion(proof.entry.leaf(), proof.index, proof.tree_size, siblings, expected)
