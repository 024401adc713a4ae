"""The contract suite's own log verifier against RFC 6962/9162 vectors and a reference tree."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from contracts import verify
from contracts.verify import VerificationError

VECTORS = Path(__file__).resolve().parents[1] / "support" / "data" / "rfc6962"
LEAVES = [
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


def _load(kind: str) -> list[tuple[str, dict[str, object]]]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert files, f"no {kind} vectors under {VECTORS}"
    return [(str(f.relative_to(VECTORS)), json.loads(f.read_text())) for f in files]


def _hashes(items: object) -> list[bytes]:
    return [base64.b64decode(x) for x in (items or [])]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "case"), _load("inclusion"), ids=lambda v: v if isinstance(v, str) else "")
def test_inclusion_vectors(name: str, case: dict[str, object]) -> None:
    args = (
        int(case["leafIdx"]),  # type: ignore[call-overload]
        int(case["treeSize"]),  # type: ignore[call-overload]
        base64.b64decode(case["leafHash"] or ""),  # type: ignore[arg-type]
        _hashes(case["proof"]),
        base64.b64decode(case["root"] or ""),  # type: ignore[arg-type]
    )
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify.verify_inclusion(*args)
    else:
        verify.verify_inclusion(*args)


@pytest.mark.parametrize(
    ("name", "case"), _load("consistency"), ids=lambda v: v if isinstance(v, str) else ""
)
def test_consistency_vectors(name: str, case: dict[str, object]) -> None:
    args = (
        int(case["size1"]),  # type: ignore[call-overload]
        int(case["size2"]),  # type: ignore[call-overload]
        base64.b64decode(case["root1"] or ""),  # type: ignore[arg-type]
        base64.b64decode(case["root2"] or ""),  # type: ignore[arg-type]
        _hashes(case["proof"]),
    )
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify.verify_consistency(*args)
    else:
        verify.verify_consistency(*args)


def test_root_of_the_standard_leaves() -> None:
    assert (
        verify.merkle_root(LEAVES).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )
    assert verify.merkle_root([]) == hashlib.sha256(b"").digest()


# A reference prover straight from RFC 9162 §2.1.3.1 (PATH) and §2.1.4.1 (SUBPROOF).
def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, leaves[:k]), verify.merkle_root(leaves[k:])]
    return [*_path(m - k, leaves[k:]), verify.merkle_root(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [verify.merkle_root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), verify.merkle_root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), verify.merkle_root(leaves[:k])]


def test_every_proof_of_small_trees_verifies_and_tampering_is_caught() -> None:
    leaves = [f"leaf {i}".encode() for i in range(17)]
    for n in range(1, len(leaves) + 1):
        tree = leaves[:n]
        root = verify.merkle_root(tree)
        for m in range(n):
            path = _path(m, tree)
            verify.verify_inclusion(m, n, verify.leaf_hash(tree[m]), path, root)
            if path:
                bad = [*path[:-1], bytes(32)]
                with pytest.raises(VerificationError):
                    verify.verify_inclusion(m, n, verify.leaf_hash(tree[m]), bad, root)
            with pytest.raises(VerificationError):
                verify.verify_inclusion(m, n, verify.leaf_hash(b"other"), path, root)
        for m in range(1, n + 1):
            proof = _subproof(m, tree, True)
            verify.verify_consistency(m, n, verify.merkle_root(tree[:m]), root, proof)
            if m < n:
                with pytest.raises(VerificationError):
                    verify.verify_consistency(m, n, verify.merkle_root(tree[:m]), bytes(32), proof)
                with pytest.raises(VerificationError):
                    verify.verify_consistency(m, n, verify.merkle_root(tree[:m]), root, proof[:-1])


def _signed_chain(length: int) -> tuple[bytes, list[dict[str, object]]]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    chain: list[dict[str, object]] = []
    prev_hash = verify.ZERO_HASH
    for index in range(length):
        sth: dict[str, object] = {
            "index": index,
            "tree_size": index,
            "root_hash": base64.b64encode(verify.merkle_root([b"x"] * index)).decode(),
            "timestamp_ms": 1_700_000_000_000 + index,
            "prev_sth_hash": base64.b64encode(prev_hash).decode(),
            "origin": "nexo.test/log",
        }
        signature = key.sign(verify.sth_signed_bytes(sth))
        sth["signature"] = base64.b64encode(signature).decode()
        sth["sth_hash"] = base64.b64encode(verify.sth_hash(sth)).decode()
        prev_hash = verify.sth_hash(sth)
        chain.append(sth)
    return public, chain


def test_signed_bytes_follow_the_design_layout() -> None:
    sth = {
        "origin": "o",
        "tree_size": 2,
        "root_hash": "Ug==",
        "index": 3,
        "timestamp_ms": 5,
        "prev_sth_hash": "AA==",
    }
    assert verify.sth_signed_bytes(sth) == b"o\n2\nUg==\n3\n5\nAA==\n"


def test_a_good_chain_verifies_and_each_break_is_named() -> None:
    public, chain = _signed_chain(4)
    verify.verify_genesis(chain[0])
    for prev, cur in itertools.pairwise(chain):
        verify.verify_sth(cur, public)
        verify.verify_link(prev, cur)

    forged = dict(chain[2], signature=base64.b64encode(bytes(64)).decode())
    with pytest.raises(VerificationError, match="signature"):
        verify.verify_sth(forged, public)
    skipped = dict(chain[2], index=3)
    with pytest.raises(VerificationError, match="index"):
        verify.verify_link(chain[1], skipped)
    unlinked = dict(chain[2], prev_sth_hash=chain[0]["sth_hash"])
    with pytest.raises(VerificationError, match="prev_sth_hash"):
        verify.verify_link(chain[1], unlinked)
    other_key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with pytest.raises(VerificationError, match="signature"):
        verify.verify_sth(chain[1], other_key)


def test_key_id_is_the_signed_note_id() -> None:
    key = bytes(range(32))
    assert verify.key_id("example", key) == hashlib.sha256(b"example\n\x01" + key).digest()[:4]


def test_checkpoint_signed_note() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = b"example.org/log\n2\nUg==\n1\n5\nAA==\n"
    blob = verify.key_id("example.org/log", public) + key.sign(body)
    note = body.decode() + "\n\u2014 example.org/log " + base64.b64encode(blob).decode() + "\n"
    assert verify.verify_checkpoint(note, "example.org/log", public) == body
    with pytest.raises(VerificationError, match="does not verify"):
        verify.verify_checkpoint(note.replace("\n2\n", "\n3\n"), "example.org/log", public)
    with pytest.raises(VerificationError, match="no signature line"):
        verify.verify_checkpoint(note, "other.org/log", public)
