"""Signed tree heads: signed bytes, Ed25519 signing and verifying, ``sth_hash``. Pure: no I/O.

docs/transparency.md "The signed tree head" fixes the bytes. The signed bytes are the C2SP
checkpoint text with three extension lines, each line ending in ``\\n``::

    <origin>
    <tree_size>
    <root_hash base64>
    <index>
    <timestamp_ms>
    <prev_sth_hash base64>

``signature`` is Ed25519 over exactly those bytes and
``sth_hash = SHA-256(signed bytes || raw 64-byte signature)``. STH 0 is the
empty tree (root ``SHA-256("")``, prev hash 32 zero bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nexo.transparency.merkle import EMPTY_ROOT, HASH_SIZE

GENESIS_PREV_HASH = bytes(HASH_SIZE)
SIGNATURE_SIZE = 64
ALGORITHM = "Ed25519"
#: C2SP signed-note signature type byte for Ed25519.
NOTE_ED25519 = b"\x01"
#: The fields of an STH as served, and the columns of its row in ``sths`` (``repository.sth_row``).
STH_FIELDS = (
    "index",
    "tree_size",
    "root_hash",
    "timestamp_ms",
    "prev_sth_hash",
    "origin",
    "signature",
    "sth_hash",
)


class STHError(ValueError):
    """An STH is malformed or its signature does not verify; the message says which."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str = "value") -> bytes:
    """Strict standard base64 (with padding) or :class:`STHError`."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise STHError(f"{what} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class TreeHead:
    """The signed part of an STH. Times in milliseconds since the Unix epoch."""

    origin: str
    index: int
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    prev_sth_hash: bytes

    def signed_bytes(self) -> bytes:
        """The exact bytes the log signs (docs/transparency.md "The signed tree head")."""
        if "\n" in self.origin or not self.origin:
            raise STHError("the origin must be one non-empty line")
        return (
            f"{self.origin}\n{self.tree_size}\n{b64(self.root_hash)}\n"
            f"{self.index}\n{self.timestamp_ms}\n{b64(self.prev_sth_hash)}\n"
        ).encode()


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    head: TreeHead
    signature: bytes

    @property
    def index(self) -> int:
        return self.head.index

    @property
    def tree_size(self) -> int:
        return self.head.tree_size

    @property
    def root_hash(self) -> bytes:
        return self.head.root_hash

    @property
    def timestamp_ms(self) -> int:
        return self.head.timestamp_ms

    @property
    def prev_sth_hash(self) -> bytes:
        return self.head.prev_sth_hash

    @property
    def origin(self) -> str:
        return self.head.origin

    @property
    def sth_hash(self) -> bytes:
        return sth_hash(self.head, self.signature)

    def to_json(self) -> dict[str, Any]:
        """The wire object of docs/transparency.md (hashes and signature base64)."""
        return {
            "index": self.index,
            "tree_size": self.tree_size,
            "root_hash": b64(self.root_hash),
            "timestamp_ms": self.timestamp_ms,
            "prev_sth_hash": b64(self.prev_sth_hash),
            "origin": self.origin,
            "signature": b64(self.signature),
            "sth_hash": b64(self.sth_hash),
        }

    @classmethod
    def from_json(cls, data: Any) -> SignedTreeHead:
        """Parse the wire object; raise :class:`STHError` if a field is missing or malformed.

        The ``sth_hash`` field is recomputed and must match.
        """
        if not isinstance(data, dict):
            raise STHError("an STH must be a JSON object")
        missing = [name for name in STH_FIELDS if name not in data]
        if missing:
            raise STHError(f"the STH lacks {', '.join(missing)}")
        for name in ("index", "tree_size", "timestamp_ms"):
            value = data[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise STHError(f"{name} must be a non-negative integer")
        if not isinstance(data["origin"], str):
            raise STHError("origin must be a string")
        hashes = {}
        for name in ("root_hash", "prev_sth_hash", "signature", "sth_hash"):
            if not isinstance(data[name], str):
                raise STHError(f"{name} must be a base64 string")
            hashes[name] = unb64(data[name], name)
        sth = cls(
            TreeHead(
                origin=data["origin"],
                index=data["index"],
                tree_size=data["tree_size"],
                root_hash=hashes["root_hash"],
                timestamp_ms=data["timestamp_ms"],
                prev_sth_hash=hashes["prev_sth_hash"],
            ),
            hashes["signature"],
        )
        if sth.sth_hash != hashes["sth_hash"]:
            raise STHError("sth_hash does not match SHA-256(signed bytes || signature)")
        return sth


def sth_hash(head: TreeHead, signature: bytes) -> bytes:
    """``SHA-256(signed bytes || raw 64-byte signature)``."""
    return hashlib.sha256(head.signed_bytes() + signature).digest()


def genesis_head(origin: str, timestamp_ms: int) -> TreeHead:
    """STH 0: the empty tree."""
    return TreeHead(origin, 0, 0, EMPTY_ROOT, timestamp_ms, GENESIS_PREV_HASH)


def next_head(previous: SignedTreeHead, tree_size: int, root_hash: bytes, timestamp_ms: int) -> TreeHead:
    """The head after ``previous``: index + 1, linked by ``prev_sth_hash``, never going back in time."""
    if tree_size < previous.tree_size:
        raise STHError(f"tree size {tree_size} is below the previous {previous.tree_size}")
    return TreeHead(
        origin=previous.origin,
        index=previous.index + 1,
        tree_size=tree_size,
        root_hash=root_hash,
        timestamp_ms=max(timestamp_ms, previous.timestamp_ms),
        prev_sth_hash=previous.sth_hash,
    )


def sign(head: TreeHead, key: Ed25519PrivateKey) -> SignedTreeHead:
    return SignedTreeHead(head, key.sign(head.signed_bytes()))


def verify(sth: SignedTreeHead, public_key: Ed25519PublicKey | bytes) -> None:
    """Raise :class:`STHError` unless the signature is the key's over the signed bytes."""
    if isinstance(public_key, bytes):
        public_key = load_public_key(public_key)
    if len(sth.signature) != SIGNATURE_SIZE:
        raise STHError(f"the signature is {len(sth.signature)} bytes, not {SIGNATURE_SIZE}")
    try:
        public_key.verify(sth.signature, sth.head.signed_bytes())
    except InvalidSignature:
        raise STHError("the signature does not verify with the log key") from None


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise STHError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(origin: str, public_key: bytes) -> bytes:
    """C2SP signed-note key ID: ``SHA-256(origin || 0x0A || 0x01 || public_key)[:4]``."""
    return hashlib.sha256(origin.encode() + b"\n" + NOTE_ED25519 + public_key).digest()[:4]


def signed_note(sth: SignedTreeHead, public_key: bytes) -> str:
    """The STH as a C2SP signed note: the signed bytes, a blank line, one signature line."""
    text = sth.head.signed_bytes().decode()
    signature = b64(key_id(sth.origin, public_key) + sth.signature)
    return f"{text}\n\u2014 {sth.origin} {signature}\n"


def parse_signed_note(note: str, origin: str, public_key: bytes) -> SignedTreeHead:
    """Parse and verify a signed note of this log (as a witness would)."""
    body, sep, signatures = note.partition("\n\n")
    if not sep:
        raise STHError("the note has no blank line before its signatures")
    lines = body.split("\n")
    if len(lines) != 6:
        raise STHError(f"the checkpoint has {len(lines)} lines, expected 6")
    wanted = key_id(origin, public_key)
    for line in signatures.splitlines():
        prefix = f"\u2014 {origin} "
        if not line.startswith(prefix):
            continue
        blob = unb64(line[len(prefix) :], "the note signature")
        if blob[:4] != wanted:
            continue
        try:
            head = TreeHead(
                origin=lines[0],
                tree_size=int(lines[1]),
                root_hash=unb64(lines[2], "the root hash"),
                index=int(lines[3]),
                timestamp_ms=int(lines[4]),
                prev_sth_hash=unb64(lines[5], "the previous STH hash"),
            )
        except ValueError as exc:
            raise STHError(f"the checkpoint is malformed: {exc}") from None
        if head.signed_bytes() != (body + "\n").encode():
            raise STHError("the checkpoint text is not in canonical form")
        sth = SignedTreeHead(head, blob[4:])
        verify(sth, public_key)
        return sth
    raise STHError("no signature line from this log's key")
