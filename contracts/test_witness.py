"""Promise: the checkpoint is cosigned by the configured quorum of witnesses
(docs/transparency.md "Witnesses").

The target publishes its witnesses at ``GET /api/log/witnesses``
(``{"quorum", "witnesses": [{"name", "vkey", "url"}]}``); a target with none is
skipped, saying so. The cosignatures are checked here from the C2SP texts alone
(signed-note vkeys, tlog-cosignature ``cosignature/v1``), not with Nexo's code.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contracts import verify
from contracts.conftest import Figure, Target

#: How long a freshly started target may take to get its first checkpoint cosigned.
COSIGN_WAIT_SECONDS = 60.0


@pytest.fixture(scope="module")
def client(target: Target) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def cosigners(note: str, vkeys: list[str]) -> set[str]:
    """Names of the witnesses (vkeys of type 0x04) whose cosignature on ``note`` verifies."""
    body, _, signatures = note.partition("\n\n")
    message_body = (body + "\n").encode()
    valid: set[str] = set()
    for vkey in vkeys:
        name, key_id_hex, material = vkey.split("+", 2)
        raw = base64.b64decode(material)
        assert raw[0] == 0x04 and len(raw) == 33, f"{name}: not an Ed25519 cosignature vkey (type 0x04)"
        key_id = hashlib.sha256(name.encode() + b"\n\x04" + raw[1:]).digest()[:4]
        assert key_id.hex() == key_id_hex, f"{name}: the vkey's key ID does not match its key"
        for line in signatures.splitlines():
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != "\u2014" or parts[1] != name:
                continue
            blob = base64.b64decode(parts[2])
            if blob[:4] != key_id or len(blob) != 76:
                continue
            (timestamp,) = struct.unpack(">Q", blob[4:12])
            message = b"cosignature/v1\n" + f"time {timestamp}\n".encode() + message_body
            try:
                Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[12:], message)
            except InvalidSignature:
                raise AssertionError(f"the cosignature line of {name} does not verify") from None
            valid.add(name)
    return valid


def test_the_checkpoint_is_cosigned_by_the_configured_quorum(
    target: Target, client: httpx.Client, figure: Figure
) -> None:
    response = client.get(target.url("/api/log/witnesses"))
    if response.status_code == 404:
        pytest.skip("the target does not publish its witnesses (GET /api/log/witnesses)")
    assert response.status_code == 200, f"GET /api/log/witnesses -> {response.status_code}"
    config = response.json()
    witnesses = config["witnesses"]
    if not witnesses:
        pytest.skip("the target has no witnesses configured (NEXO_WITNESSES)")
    quorum = int(config["quorum"])
    figure(f"witnesses seen: {', '.join(w['name'] for w in witnesses)}; quorum {quorum}")
    key = client.get(target.url("/api/log/key")).json()
    public = verify.b64(key["public_key"])
    deadline = time.monotonic() + COSIGN_WAIT_SECONDS
    while True:
        note = client.get(target.url("/api/log/checkpoint")).text
        body = verify.verify_checkpoint(note, key["origin"], public)
        valid = cosigners(note, [w["vkey"] for w in witnesses])
        if len(valid) >= quorum or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(valid) >= quorum, (
        f"the checkpoint carries {len(valid)} valid cosignatures ({sorted(valid)}), quorum {quorum}"
    )
    index = int(body.decode().split("\n")[3])
    sth = client.get(target.url(f"/api/sth/{index}")).json()
    assert body == verify.sth_signed_bytes(sth), f"the cosigned checkpoint is not STH {index}"
    figure(f"STH {index} cosigned by {', '.join(sorted(valid))}")
