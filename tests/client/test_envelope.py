"""The envelope format against its published test vectors (tests/client/vectors/, docs/client.md).

``python -m tests.client.test_envelope`` rewrites the vectors file (HPKE is randomised:
a new file has new ciphertexts, every one still checked by this test).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nexo_client import EnvelopeInvalid
from nexo_client.envelope import INFO, canonical, open_envelope, parse, seal
from nexo_client.log import b64d, b64e

pytestmark = pytest.mark.server

VECTORS = Path(__file__).parent / "vectors" / "envelope-v1.json"


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"nexo test vector " + label.encode()).digest()


def _public(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def make_vectors() -> dict[str, Any]:
    signing = Ed25519PrivateKey.from_private_bytes(_seed("alice ed25519"))
    devices = [("3b0d3e36-0f6e-4bb4-9d6a-1f0e3c5a7b21", "bob x25519"),
               ("9a4c1e52-7d3b-4f0a-8e2c-6b5d4a3f2e10", "alice phone x25519")]
    recipients = [(device, X25519PrivateKey.from_private_bytes(_seed(label))) for device, label in devices]
    body = seal("hello bob ✓", message_id="0b6f4f3c-7b1e-4d1b-9f51-2a0c2b7f9e01", to="bob",
                sender_user="alice", sender_device="5c2a9f1e-8b7d-4e3a-a1c0-2d4e6f8a0b13",
                signing_key=signing,
                recipients=[(device, _public(key)) for device, key in recipients])
    doc = json.loads(body)
    unsigned = {k: v for k, v in doc.items() if k != "sig"}
    return {
        "description": "Nexo message envelope v1 (docs/client.md). Keys are test-only.",
        "hpke": {"mode": "base", "kem": "DHKEM(X25519, HKDF-SHA256)", "kdf": "HKDF-SHA256",
                 "aead": "ChaCha20Poly1305", "info": INFO.decode(), "aad": ""},
        "plaintext": "hello bob ✓",
        "sender": {"user": "alice", "device": doc["sender"]["device"],
                   "ed25519_private": b64e(_seed("alice ed25519")), "ed25519_public": b64e(_public(signing))},
        "recipients": [
            {"device": device, "x25519_private": b64e(_seed(label)),
             "x25519_public": b64e(_public(X25519PrivateKey.from_private_bytes(_seed(label))))}
            for device, label in devices
        ],
        "signed_bytes": canonical(unsigned).decode(),
        "body": body,
    }


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def test_every_recipient_decrypts_the_vector(vectors: dict[str, Any]) -> None:
    doc = parse(vectors["body"])
    for recipient in vectors["recipients"]:
        opened = open_envelope(
            doc, sender_key=b64d(vectors["sender"]["ed25519_public"], "key"), device=recipient["device"],
            private_key=X25519PrivateKey.from_private_bytes(b64d(recipient["x25519_private"], "key")),
        )
        assert opened.text == vectors["plaintext"]
        assert (opened.sender_user, opened.to) == ("alice", "bob")


def test_the_signature_covers_exactly_the_documented_bytes(vectors: dict[str, Any]) -> None:
    doc = json.loads(vectors["body"])
    assert canonical({k: v for k, v in doc.items() if k != "sig"}).decode() == vectors["signed_bytes"]
    assert canonical(doc).decode() == vectors["body"], "the body itself is in canonical form"
    key = Ed25519PrivateKey.from_private_bytes(b64d(vectors["sender"]["ed25519_private"], "key"))
    key.public_key().verify(b64d(doc["sig"], "sig"), vectors["signed_bytes"].encode())
    # Ed25519 is deterministic: the vector's signature is reproducible from its key.
    assert b64e(key.sign(vectors["signed_bytes"].encode())) == doc["sig"]
    assert [r["device"] for r in doc["recipients"]] == sorted(r["device"] for r in doc["recipients"])


@pytest.mark.parametrize("change", ["ct", "enc", "to", "message_id", "device"])
def test_any_change_breaks_the_signature(vectors: dict[str, Any], change: str) -> None:
    doc = json.loads(vectors["body"])
    entry = doc["recipients"][0]
    if change in ("ct", "enc"):
        raw = bytearray(b64d(entry[change], change))
        raw[0] ^= 1
        entry[change] = b64e(bytes(raw))
    elif change == "device":
        doc["sender"]["device"] = "00000000-0000-4000-8000-000000000000"
    else:
        doc[change] = "mallory" if change == "to" else "11111111-1111-4111-8111-111111111111"
    recipient = vectors["recipients"][0]
    with pytest.raises(EnvelopeInvalid, match="signature"):
        open_envelope(parse(json.dumps(doc)), sender_key=b64d(vectors["sender"]["ed25519_public"], "key"),
                      device=recipient["device"],
                      private_key=X25519PrivateKey.from_private_bytes(b64d(recipient["x25519_private"], "k")))


def test_a_fresh_envelope_has_the_vectors_shape() -> None:
    fresh, stored = make_vectors(), json.loads(VECTORS.read_text())
    assert set(parse(fresh["body"])) == set(parse(stored["body"]))
    assert fresh["sender"] == stored["sender"] and fresh["recipients"] == stored["recipients"]
    assert fresh["signed_bytes"] != stored["signed_bytes"], "HPKE is randomised: fresh ephemeral keys"


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(make_vectors(), indent=2, ensure_ascii=False) + "\n")
