"""The device's two key pairs: Ed25519 to sign envelopes, X25519 to receive HPKE."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .log import b64d, b64e


def _raw_private(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@dataclass(frozen=True)
class DeviceKeys:
    signing: Ed25519PrivateKey
    encryption: X25519PrivateKey

    @classmethod
    def generate(cls) -> DeviceKeys:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_json(cls, doc: dict[str, str]) -> DeviceKeys:
        return cls(
            Ed25519PrivateKey.from_private_bytes(b64d(doc["ed25519"], "ed25519 key")),
            X25519PrivateKey.from_private_bytes(b64d(doc["x25519"], "x25519 key")),
        )

    def to_json(self) -> dict[str, str]:
        return {"ed25519": b64e(_raw_private(self.signing)), "x25519": b64e(_raw_private(self.encryption))}

    @property
    def signing_public(self) -> bytes:
        return self.signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def encryption_public(self) -> bytes:
        return self.encryption.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
