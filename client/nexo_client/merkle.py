"""RFC 9162 §2.1 Merkle proofs, verified (pure functions over bytes).

Leaf hash ``SHA-256(0x00 || leaf)``, node hash ``SHA-256(0x01 || left || right)``.
Every failure raises :class:`~nexo_client.errors.ProofInvalid`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .errors import ProofInvalid

HASH_SIZE = 32


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _sizes(items: Sequence[bytes], what: str) -> None:
    if any(len(item) != HASH_SIZE for item in items):
        raise ProofInvalid(f"{what} holds a value that is not a 32-byte hash")


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: ``leaf`` (a leaf hash) is leaf ``index`` of the tree ``root`` of ``size``."""
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf {index} is outside a tree of {size}")
    _sizes([leaf, root, *path], "inclusion proof")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofInvalid("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise ProofInvalid(f"inclusion proof of leaf {index} does not lead to the root of tree {size}")


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       path: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: the tree ``second`` extends the tree ``first``."""
    if second < first:
        raise ProofInvalid(f"tree shrank from {first} to {second}")
    if first == 0:
        return  # every tree extends the empty one
    if first == second:
        if path or first_root != second_root:
            raise ProofInvalid(f"two different roots for the tree of size {first}")
        return
    if not path:
        raise ProofInvalid("empty consistency proof for different tree sizes")
    _sizes([first_root, second_root, *path], "consistency proof")
    items = list(path)
    if first & (first - 1) == 0:
        items.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = items[0]
    for c in items[1:]:
        if sn == 0:
            raise ProofInvalid("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise ProofInvalid(f"consistency proof {first} -> {second} does not reproduce both roots")
