"""Merkle trees as RFC 6962 (Certificate Transparency) defines them, with sha256.

Leaves are hashed as ``sha256(0x00 || leaf)`` and interior nodes as
``sha256(0x01 || left || right)`` (domain separation: a leaf can never pass for a node).
A tree of n > 1 leaves splits at the largest power of two below n; the empty tree's hash is
``sha256(b"")``. Inclusion proofs are RFC 6962 audit paths, checked as in RFC 9162 §2.1.3.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_sha256 = hashlib.sha256


def leaf_hash(leaf: bytes) -> bytes:
    return _sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 Merkle Tree Hash of ``leaves`` (raw leaf data, not yet hashed)."""
    return root_of_hashes([leaf_hash(leaf) for leaf in leaves])


def root_of_hashes(level: list[bytes]) -> bytes:
    """The tree hash over already leaf-hashed nodes.

    Pairing neighbours level by level and carrying an odd last node up unchanged builds the
    same tree as RFC 6962's split at the largest power of two, without recursion.
    """
    if not level:
        return _sha256(b"").digest()
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def audit_path(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[n]): the sibling hashes from the leaf up to the root."""
    if not 0 <= index < len(leaf_hashes):
        raise IndexError(f"leaf {index} is outside a tree of {len(leaf_hashes)}")
    path: list[bytes] = []
    level = list(leaf_hashes)
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        index //= 2
    return path


def verify_inclusion(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes) -> bool:
    """Whether ``leaf`` (raw leaf data) is leaf ``index`` of a tree of ``tree_size`` with ``root``."""
    if not 0 <= index < tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
