"""Witness keys and cosignatures (pure): C2SP signed-note vkeys and tlog-cosignature v1.

A witness is configured by its verifier key ``<name>+<hex(key ID)>+<base64(0x04 || key)>``
(https://c2sp.org/signed-note, type 0x04: timestamped Ed25519 cosignature), with
``key ID = SHA-256(name || 0x0A || 0x04 || key)[:4]``. Its cosignature on a checkpoint
is a note signature line ``— <name> base64(key ID || u64 timestamp || signature)``
whose Ed25519 signature covers ``cosignature/v1\\ntime <timestamp>\\n`` followed by the
whole checkpoint body (https://c2sp.org/tlog-cosignature).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

COSIGNATURE_TYPE = 0x04
HEADER = b"cosignature/v1\n"
SIGNATURE_PREFIX = "\u2014 "
_NAME = re.compile(r"[^\s+]+")
_HEX8 = re.compile(r"[0-9a-f]{8}")


class CosignatureError(ValueError):
    """A vkey or cosignature that does not parse or does not verify."""


@dataclass(frozen=True, slots=True)
class WitnessKey:
    name: str
    key_id: bytes
    public_key: bytes

    @property
    def vkey(self) -> str:
        material = base64.b64encode(bytes([COSIGNATURE_TYPE]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"


@dataclass(frozen=True, slots=True)
class Cosignature:
    """One verified cosignature: who, when (POSIX seconds) and the 64-byte signature."""

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    def line(self) -> str:
        blob = self.key_id + struct.pack(">Q", self.timestamp) + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(blob).decode()}"


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_TYPE]) + public_key).digest()[:4]


def parse_vkey(text: str) -> WitnessKey:
    """Parse a cosigner vkey and check that its key ID matches its name and key."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise CosignatureError(f"{text!r} is not a vkey <name>+<hex key ID>+<base64 key>")
    name, hex_id, material = parts
    if not _NAME.fullmatch(name):
        raise CosignatureError(f"vkey name {name!r} is empty or holds spaces or '+'")
    if not _HEX8.fullmatch(hex_id):
        raise CosignatureError(f"vkey key ID {hex_id!r} is not 8 lowercase hex digits")
    try:
        raw = base64.b64decode(material, validate=True)
    except binascii.Error:
        raise CosignatureError(f"vkey key material of {name} is not base64") from None
    if len(raw) != 33 or raw[0] != COSIGNATURE_TYPE:
        raise CosignatureError(f"vkey of {name} is not a type 0x04 (Ed25519 cosignature) key of 32 bytes")
    key = WitnessKey(name, bytes.fromhex(hex_id), raw[1:])
    if key_id(name, key.public_key) != key.key_id:
        raise CosignatureError(f"vkey key ID {hex_id} of {name} is not SHA-256(name, 0x0A, 0x04, key)[:4]")
    return key


def signed_message(checkpoint_body: bytes, timestamp: int) -> bytes:
    """What a cosigner signs: the v1 header, the time line and the whole checkpoint body."""
    return HEADER + f"time {timestamp}\n".encode() + checkpoint_body


def verify_lines(text: str, checkpoint_body: bytes, key: WitnessKey) -> list[Cosignature]:
    """The valid cosignatures by ``key`` among these signature lines (others are ignored).

    Raises :class:`CosignatureError` if a line names the key (name and key ID) but does
    not verify, or has no timestamp (a witness must not omit it).
    """
    found: list[Cosignature] = []
    prefix = f"{SIGNATURE_PREFIX}{key.name} "
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        try:
            blob = base64.b64decode(line[len(prefix) :].strip(), validate=True)
        except binascii.Error:
            raise CosignatureError(f"a signature line of {key.name} is not base64") from None
        if blob[:4] != key.key_id:
            continue
        if len(blob) != 4 + 8 + 64:
            raise CosignatureError(f"a cosignature of {key.name} is {len(blob)} bytes, not 76")
        (timestamp,) = struct.unpack(">Q", blob[4:12])
        if timestamp == 0 or timestamp >= 1 << 63:
            raise CosignatureError(f"a cosignature of {key.name} has no valid timestamp")
        cosig = Cosignature(key.name, key.key_id, timestamp, blob[12:])
        verify(cosig, checkpoint_body, key)
        found.append(cosig)
    return found


def verify(cosig: Cosignature, checkpoint_body: bytes, key: WitnessKey) -> None:
    if cosig.name != key.name or cosig.key_id != key.key_id:
        raise CosignatureError(f"the cosignature is by {cosig.name}, not {key.name}")
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(
            cosig.signature, signed_message(checkpoint_body, cosig.timestamp)
        )
    except (InvalidSignature, ValueError):
        raise CosignatureError(f"the cosignature of {key.name} does not verify") from None
