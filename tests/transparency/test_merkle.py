"""Merkle hashing and proofs against the RFC 6962 vectors and a naive recursive reference."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from nexo.transparency import merkle
from nexo.transparency.merkle import MemoryTree, ProofError

VECTORS = Path(__file__).resolve().parents[1] / "support" / "data" / "rfc6962"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))
STANDARD_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_every_vector_file_is_collected() -> None:
    assert len(INCLUSION) + len(CONSISTENCY) == len(list(VECTORS.rglob("*.json")))
    assert len(INCLUSION) > 50 and len(CONSISTENCY) > 50


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    case = _load(path)
    proof = [_b(p) for p in case["proof"] or []]
    args = (case["leafIdx"], case["treeSize"], _b(case["leafHash"]), proof, _b(case["root"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector(path: Path) -> None:
    case = _load(path)
    proof = [_b(p) for p in case["proof"] or []]
    args = (case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), proof)
    if case["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_happy_path_vectors_are_reproduced_by_our_generator() -> None:
    """Our own proofs over the standard 8 leaves equal the vectors' proofs."""
    tree = MemoryTree(merkle.leaf_hash(leaf) for leaf in STANDARD_LEAVES)
    assert tree.root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    checked = 0
    for path in INCLUSION:
        case = _load(path)
        if case["wantErr"] or case["treeSize"] > 8 or "single-entry" in str(path):
            continue
        proof = tree.inclusion_proof(case["leafIdx"], case["treeSize"])
        assert [base64.b64encode(p).decode() for p in proof] == (case["proof"] or [])
        assert tree.root(case["treeSize"]) == _b(case["root"])
        checked += 1
    for path in CONSISTENCY:
        case = _load(path)
        if case["wantErr"] or case["size2"] > 8 or case["size1"] == case["size2"]:
            continue
        proof = tree.consistency_proof(case["size1"], case["size2"])
        assert [base64.b64encode(p).decode() for p in proof] == (case["proof"] or [])
        checked += 1
    assert checked >= 5


# -- naive reference (RFC 9162 §2.1 recursion over the leaf list) ----------------------------


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n <= 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], whole), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def test_random_trees_match_the_naive_reference() -> None:
    rng = random.Random(9162)
    for size in [*range(1, 70), 127, 128, 129, 255, 256, 257, 1000]:
        leaves = [rng.randbytes(rng.randrange(0, 40)) for _ in range(size)]
        tree = MemoryTree()
        for leaf in leaves:
            tree.append(leaf)
        for n in {1, size, rng.randrange(1, size + 1), rng.randrange(1, size + 1)}:
            root = ref_mth(leaves[:n])
            assert tree.root(n) == root
            for m in {0, n - 1, rng.randrange(n)}:
                path = tree.inclusion_proof(m, n)
                assert path == ref_path(m, leaves[:n])
                merkle.verify_inclusion(m, n, merkle.leaf_hash(leaves[m]), path, root)
                if path:
                    bad = list(path)
                    bad[rng.randrange(len(bad))] = rng.randbytes(32)
                    with pytest.raises(ProofError):
                        merkle.verify_inclusion(m, n, merkle.leaf_hash(leaves[m]), bad, root)
            for first in {1, n, rng.randrange(1, n + 1)}:
                proof = tree.consistency_proof(first, n)
                assert proof == ref_subproof(first, leaves[:n], True)
                merkle.verify_consistency(first, n, tree.root(first), root, proof)
                if proof:
                    with pytest.raises(ProofError):
                        merkle.verify_consistency(first, n, tree.root(first), root, proof[:-1])
                    with pytest.raises(ProofError):
                        merkle.verify_consistency(first, n, rng.randbytes(32), root, proof)


def test_stored_node_proofs_equal_memory_proofs() -> None:
    """Proofs built from only the named complete subtrees (the storage path) are right."""
    rng = random.Random(6962)
    tree = MemoryTree(rng.randbytes(32) for _ in range(777))
    for _ in range(200):
        n = rng.randrange(1, 778)
        m = rng.randrange(n)
        needed = merkle.inclusion_nodes(m, n)
        assert len(needed) <= 2 * n.bit_length()
        nodes = {node: tree.node(*node) for node in needed}
        assert merkle.build_path(merkle.inclusion_ranges(m, n), nodes) == tree.inclusion_proof(m, n)
        first = rng.randrange(1, n + 1)
        needed = merkle.consistency_nodes(first, n)
        nodes = {node: tree.node(*node) for node in needed}
        assert merkle.build_path(merkle.consistency_ranges(first, n), nodes) == tree.consistency_proof(
            first, n
        )
        roots = {node: tree.node(*node) for node in merkle.root_nodes(n)}
        assert merkle.root_from_nodes(n, roots) == tree.root(n)


def test_appended_nodes_builds_the_same_tree_in_batches() -> None:
    rng = random.Random(1)
    reference = MemoryTree()
    stored: dict[tuple[int, int], bytes] = {}
    size = 0
    while size < 600:
        batch = [rng.randbytes(32) for _ in range(rng.randrange(1, 40))]
        frontier = {node: stored[node] for node in merkle.root_nodes(size)}
        stored.update(merkle.appended_nodes(size, frontier, batch))
        for value in batch:
            reference.append_hash(value)
        size += len(batch)
        assert merkle.root_from_nodes(size, stored) == reference.root()
    for level, row in enumerate(reference.levels):
        for index, value in enumerate(row):
            assert stored[(level, index)] == value


def test_batch_proofs_from_the_appended_nodes_as_the_sequencer_makes_them() -> None:
    """A batch's proofs, each distinct range hashed once, equal the reference proofs; the new
    tree's root nodes are all among the old root nodes and the created ones (the frontier the
    sequencer keeps for its next batch)."""
    rng = random.Random(9162)
    reference = MemoryTree()
    size = 0
    while size < 700:
        batch = [rng.randbytes(32) for _ in range(rng.randrange(1, 60))]
        frontier = {node: reference.node(*node) for node in merkle.root_nodes(size)}
        known = {**frontier, **merkle.appended_nodes(size, frontier, batch)}
        for value in batch:
            reference.append_hash(value)
        new_size = size + len(batch)
        assert set(merkle.root_nodes(new_size)) <= known.keys()
        ranges = [merkle.inclusion_ranges(index, new_size) for index in range(size, new_size)]
        distinct = {item for path in ranges for item in path}
        for node in merkle.nodes_for(distinct) - known.keys():
            known[node] = reference.node(*node)
        hashed = merkle.hash_ranges(distinct, known)
        for index, path in zip(range(size, new_size), ranges, strict=True):
            assert [hashed[item] for item in path] == reference.inclusion_proof(index, new_size)
        size = new_size


def test_empty_tree_and_bad_arguments() -> None:
    assert MemoryTree().root() == hashlib.sha256(b"").digest()
    with pytest.raises(ProofError):
        merkle.inclusion_ranges(5, 5)
    with pytest.raises(ProofError):
        merkle.consistency_ranges(0, 5)
    with pytest.raises(ProofError):
        merkle.consistency_ranges(6, 5)
    with pytest.raises(ProofError):
        merkle.verify_consistency(2, 3, b"x" * 31, b"y" * 32, [b"z" * 32])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(0, 1, b"x" * 33, [], b"x" * 33)
