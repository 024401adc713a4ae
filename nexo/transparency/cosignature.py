"""Cosignatures (pure): C2SP tlog-cosignature v1, checked against a witness's vkey.

A witness is configured by its verifier key ``<name>+<hex(key ID)>+<base64(0x04 || key)>``
(https://c2sp.org/signed-note, type 0x04: timestamped Ed25519 cosignature), with
``key ID = SHA-256(name || 0x0A || 0x04 || key)[:4]``; :mod:`nexo.platform.vkeys` parses it
(the settings need it, and the platform imports no feature) and this module re-exports
``WitnessKey``, ``parse_vkey``, ``key_id`` and ``CosignatureError``. Its cosignature on a checkpoint
is a note signature line ``— <name> base64(key ID || u64 timestamp || signature)``
whose Ed25519 signature covers ``cosignature/v1\\ntime <timestamp>\\n`` followed by the
whole checkpoint body (https://c2sp.org/tlog-cosignature).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nexo.platform.vkeys import COSIGNATURE_TYPE as COSIGNATURE_TYPE
from nexo.platform.vkeys import CosignatureError as CosignatureError
from nexo.platform.vkeys import WitnessKey as WitnessKey
from nexo.platform.vkeys import key_id as key_id
from nexo.platform.vkeys import parse_vkey as parse_vkey

HEADER = b"cosignature/v1\n"
SIGNATURE_PREFIX = "\u2014 "


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
