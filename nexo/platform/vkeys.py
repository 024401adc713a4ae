"""Witness verifier keys (pure): parsing a C2SP signed-note vkey of type 0x04.

``<name>+<hex(key ID)>+<base64(0x04 || key)>`` (https://c2sp.org/signed-note, type 0x04:
timestamped Ed25519 cosignature), with ``key ID = SHA-256(name || 0x0A || 0x04 || key)[:4]``.
Platform-level because the settings parse ``NEXO_WITNESSES`` with it (a bad key refuses the
start in one line); the cosignatures themselves are ``nexo.transparency.cosignature``'s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

COSIGNATURE_TYPE = 0x04
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
