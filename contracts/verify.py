"""An independent verifier of Nexo's transparency log, for the contract suite.

Written from docs/transparency.md and RFC 9162, not from the
server's code, so a bug there cannot hide itself here. Pure functions over
bytes; every check raises :class:`VerificationError` naming what is wrong.

- Merkle hashing: RFC 9162 §2.1.1 (SHA-256, leaf ``H(0x00 || leaf)``, node
  ``H(0x01 || left || right)``, empty tree ``H("")``).
- Inclusion proofs: RFC 9162 §2.1.3.2. Consistency proofs: §2.1.4.2.
- STH signed bytes: the C2SP checkpoint body with three extension lines
  (index, timestamp_ms, prev_sth_hash), each line ending in ``\\n``; Ed25519
  signature over them; ``sth_hash = SHA-256(signed bytes || signature)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
ZERO_HASH = bytes(HASH_SIZE)


class VerificationError(AssertionError):
    """A proof, signature or link does not hold. The message says which."""


def b64(data: str) -> bytes:
    """Decode standard base64 strictly (what the API serves)."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise VerificationError(f"not base64: {data!r}") from exc


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x00 || leaf)``."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_hashes(path: Sequence[bytes], what: str) -> None:
    for i, item in enumerate(path):
        if len(item) != HASH_SIZE:
            raise VerificationError(f"{what}[{i}] is {len(item)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, tree_size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2 steps 1-4: the root implied by ``leaf`` (a leaf hash) and ``path``."""
    if index < 0 or index >= tree_size:
        raise VerificationError(f"leaf index {index} is outside a tree of size {tree_size}")
    _check_hashes([leaf], "leaf_hash")
    _check_hashes(path, "audit_path")
    fn, sn = index, tree_size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise VerificationError("audit path is longer than the tree is deep")
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
    if sn != 0:
        raise VerificationError("audit path is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, tree_size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> None:
    """Check that leaf hash ``leaf`` is at ``index`` of the tree with ``root`` (RFC 9162 §2.1.3.2)."""
    _check_hashes([root], "root_hash")
    computed = root_from_inclusion(index, tree_size, leaf, path)
    if computed != root:
        raise VerificationError(
            f"inclusion proof of leaf {index} in tree {tree_size} gives root "
            f"{_show(computed)}, the tree head says {_show(root)}"
        )


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> None:
    """Check that tree ``second`` extends tree ``first`` (RFC 9162 §2.1.4.2).

    A proof from the empty tree proves nothing and is rejected, as are
    ``second < first`` and, for equal sizes, a non-empty proof or differing roots.
    """
    if first <= 0:
        raise VerificationError(f"consistency from a tree of size {first} proves nothing")
    if second < first:
        raise VerificationError(f"tree size went down: {first} -> {second}")
    if first == second:
        if path:
            raise VerificationError("equal tree sizes need an empty consistency path")
        if first_root != second_root:
            raise VerificationError(f"same tree size {first}, different roots")
        return
    if not path:
        raise VerificationError("empty consistency path for different tree sizes")
    _check_hashes([first_root, second_root], "root")
    _check_hashes(path, "consistency_path")
    items = list(path)
    if first & (first - 1) == 0:  # an exact power of two: the first root is a subtree
        items.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = items[0]
    for c in items[1:]:
        if sn == 0:
            raise VerificationError("consistency path is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency path is too short")
    if fr != first_root:
        raise VerificationError(f"consistency proof {first}->{second} does not reproduce the first root")
    if sr != second_root:
        raise VerificationError(f"consistency proof {first}->{second} does not reproduce the second root")


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over raw leaves (for recomputing small trees)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


# -- signed tree heads -----------------------------------------------------------------------


def sth_signed_bytes(sth: Mapping[str, Any]) -> bytes:
    """The checkpoint body with Nexo's three extension lines, each ending in LF
    (docs/transparency.md "The signed tree head")."""
    lines = [
        str(sth["origin"]),
        str(int(sth["tree_size"])),
        str(sth["root_hash"]),
        str(int(sth["index"])),
        str(int(sth["timestamp_ms"])),
        str(sth["prev_sth_hash"]),
    ]
    return "".join(line + "\n" for line in lines).encode()


def sth_hash(sth: Mapping[str, Any]) -> bytes:
    """``SHA-256(signed bytes || raw 64-byte signature)``."""
    return hashlib.sha256(sth_signed_bytes(sth) + b64(sth["signature"])).digest()


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise VerificationError(f"log public key is {len(raw)} bytes, Ed25519 needs 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_sth(sth: Mapping[str, Any], public_key: bytes) -> None:
    """Signature, hash sizes and ``sth_hash`` of one STH object as served by the API."""
    missing = {
        "index",
        "tree_size",
        "root_hash",
        "timestamp_ms",
        "prev_sth_hash",
        "origin",
        "signature",
        "sth_hash",
    } - set(sth)
    if missing:
        raise VerificationError(f"STH {sth.get('index')} lacks {sorted(missing)}")
    for name in ("root_hash", "prev_sth_hash", "sth_hash"):
        if len(b64(sth[name])) != HASH_SIZE:
            raise VerificationError(f"STH {sth['index']}: {name} is not a 32-byte hash")
    signature = b64(sth["signature"])
    if len(signature) != 64:
        raise VerificationError(f"STH {sth['index']}: signature is {len(signature)} bytes, not 64")
    try:
        load_public_key(public_key).verify(signature, sth_signed_bytes(sth))
    except InvalidSignature:
        raise VerificationError(
            f"STH {sth['index']}: Ed25519 signature does not verify with the published key"
        ) from None
    if sth_hash(sth) != b64(sth["sth_hash"]):
        raise VerificationError(f"STH {sth['index']}: sth_hash is not SHA-256(signed bytes || signature)")


def verify_link(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> None:
    """The chain rules between neighbours: index + 1, prev hash, size and time never go down."""
    if int(cur["index"]) != int(prev["index"]) + 1:
        raise VerificationError(f"STH index jumps from {prev['index']} to {cur['index']} (must step by one)")
    if cur["prev_sth_hash"] != prev["sth_hash"]:
        raise VerificationError(
            f"STH {cur['index']}: prev_sth_hash is not the sth_hash of STH {prev['index']}"
        )
    if int(cur["tree_size"]) < int(prev["tree_size"]):
        raise VerificationError(
            f"STH {cur['index']}: tree size went down ({prev['tree_size']} -> {cur['tree_size']})"
        )
    if int(cur["timestamp_ms"]) < int(prev["timestamp_ms"]):
        raise VerificationError(f"STH {cur['index']}: timestamp went back")


def verify_genesis(sth: Mapping[str, Any]) -> None:
    """STH 0 is the empty tree: size 0, root ``SHA-256("")``, prev hash 32 zero bytes."""
    if (
        int(sth["tree_size"]) != 0
        or b64(sth["root_hash"]) != EMPTY_ROOT
        or b64(sth["prev_sth_hash"]) != ZERO_HASH
    ):
        raise VerificationError("STH 0 is not the empty tree with a zero prev hash")


def key_id(origin: str, public_key: bytes) -> bytes:
    """C2SP signed-note key ID of an Ed25519 key: ``SHA-256(origin || 0x0A || 0x01 || key)[:4]``."""
    return hashlib.sha256(origin.encode() + b"\n\x01" + public_key).digest()[:4]


def _show(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def verify_checkpoint(note: str, origin: str, public_key: bytes) -> bytes:
    """Check a C2SP signed note served as the log checkpoint; return its signed body.

    The note is the body (ending in LF), a blank line, then signature lines
    ``— <name> <base64(key ID || signature)>``. The line named ``origin`` with
    the key ID of ``public_key`` must carry an Ed25519 signature of the body.
    """
    body, sep, signatures = note.partition("\n\n")
    if not sep:
        raise VerificationError("checkpoint has no blank line between body and signatures")
    signed = (body + "\n").encode()
    wanted = key_id(origin, public_key)
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            continue
        parts = line[2:].split(" ")
        if len(parts) != 2 or parts[0] != origin:
            continue
        blob = b64(parts[1])
        if blob[:4] != wanted:
            continue
        if len(blob) != 68:
            raise VerificationError(f"checkpoint signature is {len(blob) - 4} bytes, not 64")
        try:
            load_public_key(public_key).verify(blob[4:], signed)
        except InvalidSignature:
            raise VerificationError("checkpoint signature does not verify with the published key") from None
        return signed
    raise VerificationError(f"checkpoint has no signature line by {origin!r} with the log's key ID")
