"""The message envelope: HPKE to each device, one Ed25519 signature over the whole (pure).

Byte layout (docs/client.md, "The envelope"): the message ``body`` is the UTF-8
JSON object

    {"message_id", "recipients": [{"ct", "device", "enc"}...], "sender": {"device", "user"},
     "sig", "suite", "to", "v": 1}

``suite`` is ``"DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305"``; each
recipient entry is one RFC 9180 base-mode single-shot encryption of the
plaintext (UTF-8 text) to that device's X25519 key with ``info`` = ``INFO`` and
empty AAD; ``enc`` is the 32-byte encapsulated key and ``ct`` the AEAD
ciphertext with its tag, both standard base64; recipients are sorted by
``device``. ``sig`` is Ed25519 by the sender device over the canonical JSON of
the object without ``sig``: keys sorted, no whitespace, ASCII only (for these
values identical to RFC 8785 JCS).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from .errors import EnvelopeInvalid, ProofInvalid
from .log import b64d, b64e

VERSION = 1
SUITE_NAME = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305"
INFO = b"nexo-envelope/v1"
ENC_SIZE = 32
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
_FIELDS = {"v", "suite", "message_id", "to", "sender", "recipients", "sig"}


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII: the bytes the signature covers."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Opened:
    message_id: str
    sender_user: str
    sender_device: str
    to: str
    text: str


def seal(
    text: str,
    *,
    message_id: str,
    to: str,
    sender_user: str,
    sender_device: str,
    signing_key: Ed25519PrivateKey,
    recipients: Iterable[tuple[str, bytes]],
) -> str:
    """Encrypt ``text`` to every (device id, X25519 public key) and sign; the body string."""
    plaintext = text.encode()
    entries = []
    for device, public in sorted(set(recipients)):
        blob = _SUITE.encrypt(plaintext, X25519PublicKey.from_public_bytes(public), info=INFO)
        entries.append({"device": device, "enc": b64e(blob[:ENC_SIZE]), "ct": b64e(blob[ENC_SIZE:])})
    if not entries:
        raise ValueError("an envelope needs at least one recipient device")
    doc: dict[str, Any] = {
        "v": VERSION,
        "suite": SUITE_NAME,
        "message_id": message_id,
        "to": to,
        "sender": {"user": sender_user, "device": sender_device},
        "recipients": entries,
    }
    doc["sig"] = b64e(signing_key.sign(canonical(doc)))
    return canonical(doc).decode()


def parse(body: str) -> dict[str, Any]:
    """The envelope's JSON, shape-checked, or :class:`EnvelopeInvalid`."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise EnvelopeInvalid("message body is not a JSON envelope") from None
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise EnvelopeInvalid("envelope fields are not exactly " + ", ".join(sorted(_FIELDS)))
    if doc["v"] != VERSION or doc["suite"] != SUITE_NAME:
        raise EnvelopeInvalid(f"unsupported envelope version {doc['v']!r} / suite {doc['suite']!r}")
    sender = doc["sender"]
    if not isinstance(sender, dict) or set(sender) != {"user", "device"}:
        raise EnvelopeInvalid("envelope sender must be {user, device}")
    if not isinstance(doc["recipients"], list) or not all(
        isinstance(r, dict) and set(r) == {"device", "enc", "ct"} for r in doc["recipients"]
    ):
        raise EnvelopeInvalid("envelope recipients must be a list of {device, enc, ct}")
    return doc


def open_envelope(
    doc: Mapping[str, Any], *, sender_key: bytes, device: str, private_key: X25519PrivateKey
) -> Opened:
    """Verify the signature with the sender's (verified) key, then decrypt this device's entry."""
    unsigned = {k: v for k, v in doc.items() if k != "sig"}
    try:
        signature = b64d(doc["sig"], "sig")
        Ed25519PublicKey.from_public_bytes(sender_key).verify(signature, canonical(unsigned))
    except (InvalidSignature, ProofInvalid, ValueError):
        raise EnvelopeInvalid("envelope signature does not verify with the sender device's key") from None
    mine = [r for r in doc["recipients"] if r["device"] == device]
    if not mine:
        raise EnvelopeInvalid("envelope has no entry for this device")
    try:
        blob = b64d(mine[0]["enc"], "enc") + b64d(mine[0]["ct"], "ct")
        text = _SUITE.decrypt(blob, private_key, info=INFO).decode()
    except (InvalidTag, ProofInvalid, UnicodeDecodeError, ValueError):
        raise EnvelopeInvalid("envelope entry for this device does not decrypt") from None
    return Opened(str(doc["message_id"]), str(doc["sender"]["user"]), str(doc["sender"]["device"]),
                  str(doc["to"]), text)
