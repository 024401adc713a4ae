"""Tree heads, checkpoints and witness cosignatures (pure parsing and checking).

Layouts from the Nexo server's docs/transparency.md: an STH signs the six-line
checkpoint text (origin, size, root, index, timestamp_ms, prev_sth_hash, each
ending in LF) with Ed25519; ``sth_hash = SHA-256(those bytes || signature)``.
Cosignatures follow C2SP tlog-cosignature v1 (Ed25519, key ID algorithm byte 0x04).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import CosignatureInvalid, ProofInvalid, SignatureInvalid

EM_DASH = "\u2014"


def b64d(value: Any, what: str) -> bytes:
    """Strict standard base64, or :class:`ProofInvalid` naming the field."""
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProofInvalid(f"{what} is not base64") from exc


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


def note_key_id(name: str, algorithm: int, public_key: bytes) -> bytes:
    """C2SP signed-note key ID: ``SHA-256(name || 0x0A || alg || key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([algorithm]) + public_key).digest()[:4]


@dataclass(frozen=True)
class TreeHead:
    """One signed tree head as the server serves it."""

    index: int
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    prev_sth_hash: bytes
    origin: str
    signature: bytes

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TreeHead:
        try:
            head = cls(
                index=int(doc["index"]),
                tree_size=int(doc["tree_size"]),
                root_hash=b64d(doc["root_hash"], "root_hash"),
                timestamp_ms=int(doc["timestamp_ms"]),
                prev_sth_hash=b64d(doc["prev_sth_hash"], "prev_sth_hash"),
                origin=str(doc["origin"]),
                signature=b64d(doc["signature"], "signature"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofInvalid(f"malformed tree head: {exc}") from exc
        if len(head.root_hash) != 32 or len(head.prev_sth_hash) != 32 or len(head.signature) != 64:
            raise ProofInvalid("malformed tree head: wrong hash or signature length")
        if head.index < 0 or head.tree_size < 0:
            raise ProofInvalid("malformed tree head: negative index or size")
        return head

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "tree_size": self.tree_size,
            "root_hash": b64e(self.root_hash),
            "timestamp_ms": self.timestamp_ms,
            "prev_sth_hash": b64e(self.prev_sth_hash),
            "origin": self.origin,
            "signature": b64e(self.signature),
            "sth_hash": b64e(self.sth_hash),
        }

    @property
    def body(self) -> bytes:
        """The signed bytes: the checkpoint text with Nexo's three extension lines."""
        lines = [self.origin, str(self.tree_size), b64e(self.root_hash), str(self.index),
                 str(self.timestamp_ms), b64e(self.prev_sth_hash)]
        return "".join(line + "\n" for line in lines).encode()

    @property
    def sth_hash(self) -> bytes:
        return hashlib.sha256(self.body + self.signature).digest()

    def verify(self, log_key: bytes) -> None:
        """The Ed25519 signature with the pinned log key, or :class:`SignatureInvalid`."""
        try:
            Ed25519PublicKey.from_public_bytes(log_key).verify(self.signature, self.body)
        except InvalidSignature:
            raise SignatureInvalid(
                f"tree head {self.index} (size {self.tree_size}) is not signed by the pinned log key"
            ) from None


@dataclass(frozen=True)
class Witness:
    """A cosigner the client trusts: its name and Ed25519 public key (C2SP vkey)."""

    name: str
    public_key: bytes

    @classmethod
    def parse(cls, vkey: str) -> Witness:
        """``<name>+<hex key ID>+<base64(0x04 || 32-byte key)>`` (C2SP signed-note vkey)."""
        try:
            name, key_hash, blob_b64 = vkey.strip().split("+", 2)
            blob = base64.b64decode(blob_b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"witness key {vkey!r} is not a vkey (name+keyid+base64)") from exc
        if len(blob) != 33 or blob[0] != 0x04:
            raise ValueError(f"witness key {vkey!r} is not an Ed25519 cosignature key (type 0x04)")
        witness = cls(name, blob[1:])
        if key_hash.lower() != witness.key_id.hex():
            raise ValueError(f"witness key {vkey!r}: key ID does not match the key")
        return witness

    @property
    def key_id(self) -> bytes:
        return note_key_id(self.name, 0x04, self.public_key)

    def vkey(self) -> str:
        blob = b64e(bytes([0x04]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{blob}"


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    """C2SP tlog-cosignature v1 Ed25519 signed message."""
    return b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + body


@dataclass(frozen=True)
class Checkpoint:
    """A parsed signed note from ``GET /api/log/checkpoint``."""

    head: TreeHead
    signature_lines: tuple[tuple[str, bytes], ...]  # (key name, key ID || signature)


def parse_checkpoint(note: str, log_key: bytes) -> Checkpoint:
    """Read the tree head out of a checkpoint note and its log signature line."""
    body, sep, sigs = note.partition("\n\n")
    if not sep:
        raise ProofInvalid("checkpoint has no blank line before its signatures")
    lines = body.split("\n")
    if len(lines) != 6:
        raise ProofInvalid(f"checkpoint body has {len(lines)} lines, Nexo's has 6")
    parsed: list[tuple[str, bytes]] = []
    for line in sigs.splitlines():
        if not line.startswith(EM_DASH + " "):
            continue
        parts = line[2:].split(" ")
        if len(parts) == 2:
            parsed.append((parts[0], b64d(parts[1], "checkpoint signature")))
    origin = lines[0]
    wanted = note_key_id(origin, 0x01, log_key)
    own = [blob for name, blob in parsed if name == origin and blob[:4] == wanted]
    if not own or len(own[0]) != 68:
        raise SignatureInvalid("checkpoint carries no signature by the log's pinned key")
    try:
        head = TreeHead(
            index=int(lines[3]), tree_size=int(lines[1]), root_hash=b64d(lines[2], "root"),
            timestamp_ms=int(lines[4]), prev_sth_hash=b64d(lines[5], "prev_sth_hash"),
            origin=origin, signature=own[0][4:],
        )
    except ValueError as exc:
        raise ProofInvalid(f"malformed checkpoint: {exc}") from exc
    if head.body != (body + "\n").encode():
        raise ProofInvalid("checkpoint body is not in canonical form")
    return Checkpoint(head, tuple(parsed))


def verify_cosignatures(checkpoint: Checkpoint, witnesses: Sequence[Witness], quorum: int) -> list[str]:
    """Names of the configured witnesses with a valid cosignature; at least ``quorum`` of them.

    A line that claims a configured witness's name and key ID but does not verify
    is an error in itself (a forged cosignature), not merely ignored.
    """
    body = checkpoint.head.body
    valid: list[str] = []
    for witness in witnesses:
        for name, blob in checkpoint.signature_lines:
            if name != witness.name or blob[:4] != witness.key_id:
                continue
            if len(blob) != 4 + 8 + 64:
                raise CosignatureInvalid(f"cosignature by {name} has the wrong length")
            (timestamp,) = struct.unpack(">Q", blob[4:12])
            try:
                Ed25519PublicKey.from_public_bytes(witness.public_key).verify(
                    blob[12:], cosigned_message(body, timestamp)
                )
            except InvalidSignature:
                raise CosignatureInvalid(f"cosignature by witness {name} does not verify") from None
            valid.append(name)
            break
    if len(valid) < quorum:
        raise CosignatureInvalid(
            f"{len(valid)} valid witness cosignature(s) of {len(witnesses)} configured, quorum is {quorum}"
        )
    return valid
