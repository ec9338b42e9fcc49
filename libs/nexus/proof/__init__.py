"""Proof: manifests with Merkle roots, inclusion proofs, log verification and seals.

::

    manifest = await manifest_of(FileSource(backup_dir))               # a folder
    manifest = await manifest_of(RawSource(raw, "reports/"))           # a Raw prefix
    manifest = await manifest_of_files([summary_path, events_path])    # named files, relative paths
    result = await verify_manifest(manifest, FileSource(backup_dir))   # result.valid, result.errors
    report = await verify_log(log)                                     # report.ok, report.problems
    await seal_log(log)                                                # nexus.platform.log.sealed
"""

from __future__ import annotations

from nexus.proof._log import SEAL_STREAM, SEAL_TYPE, LogProblem, LogReport, seal_log, seal_root, verify_log
from nexus.proof._manifest import (
    ALGORITHM,
    FileListSource,
    FileSource,
    InclusionProof,
    Manifest,
    ManifestEntry,
    ManifestProblem,
    ManifestSource,
    ManifestVerification,
    ProofError,
    RawSource,
    build_manifest,
    inclusion_proof,
    manifest_of,
    manifest_of_files,
    verify_inclusion_proof,
    verify_manifest,
)
from nexus.proof._merkle import audit_path, leaf_hash, merkle_root, node_hash, verify_inclusion

__all__ = [
    "ALGORITHM",
    "SEAL_STREAM",
    "SEAL_TYPE",
    "FileListSource",
    "FileSource",
    "InclusionProof",
    "LogProblem",
    "LogReport",
    "Manifest",
    "ManifestEntry",
    "ManifestProblem",
    "ManifestSource",
    "ManifestVerification",
    "ProofError",
    "RawSource",
    "audit_path",
    "build_manifest",
    "inclusion_proof",
    "leaf_hash",
    "manifest_of",
    "manifest_of_files",
    "merkle_root",
    "node_hash",
    "seal_log",
    "seal_root",
    "verify_inclusion",
    "verify_inclusion_proof",
    "verify_log",
    "verify_manifest",
]
