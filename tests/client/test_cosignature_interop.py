"""The client's cosignature check against an independent C2SP implementation (aics-tlog, PyPI).

aics-tlog signs a cosignature of a real Nexo checkpoint, and the client must accept it
(and refuse it altered); aics-tlog also verifies the cosignatures the tests' witness (the
fault proxy's ``client_cosign``) makes, so the tampering tests use the real format.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from contracts.server import LocalServer
from nexo_client import CosignatureInvalid, Witness
from nexo_client.log import parse_checkpoint, verify_cosignatures
from tests.client.conftest import ClientFactory, new_name
from tests.support.aics import tool
from tests.support.fault_proxy import client_cosign

pytestmark = pytest.mark.server

AICS = """
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from aics_tlog.cosign import cosignature_vkey, sign_cosignature, verify_cosignature
from aics_tlog.note import format_vkey

data = json.load(sys.stdin)
root, ext = base64.b64decode(data["root"]), data["extension_lines"]
key = Ed25519PrivateKey.generate()
_, line = sign_cosignature(key, "aics.example/w", data["timestamp"], data["origin"], data["size"], root, ext)
theirs = base64.b64encode(line.key_id + line.signature).decode()
ours = base64.b64decode(data["ours"])
print(json.dumps({
    "vkey": format_vkey(cosignature_vkey("aics.example/w", key.public_key())),
    "line": "\\u2014 aics.example/w " + theirs,
    "ours_verifies": verify_cosignature(ours[4:], data["ours_name"], base64.b64decode(data["ours_key"]),
                                        data["origin"], data["size"], root, ext),
}))
"""


async def test_cosignatures_interoperate_with_aics_tlog(
    nexo: LocalServer, make_client: ClientFactory
) -> None:
    await make_client(nexo.base_url, new_name())  # the log has a leaf and an STH
    async with httpx.AsyncClient() as http:
        note = (await http.get(f"{nexo.base_url}/api/log/checkpoint")).text
        log_key = base64.b64decode((await http.get(f"{nexo.base_url}/api/log/key")).json()["public_key"])
    ours_key = Ed25519PrivateKey.generate()
    ours_public = ours_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ours_note = client_cosign(note, ours_key, "witness.test/w1", valid=True)
    ours_blob = ours_note.rstrip("\n").rsplit(" ", 1)[1]
    lines = note.split("\n\n", 1)[0].split("\n")
    request = {
        "origin": lines[0], "size": int(lines[1]), "root": lines[2], "extension_lines": lines[3:],
        "timestamp": int(time.time()), "ours": ours_blob, "ours_name": "witness.test/w1",
        "ours_key": base64.b64encode(ours_public).decode(),
    }
    done = subprocess.run(  # noqa: ASYNC221 - a short child process
        [tool("python"), "-c", AICS], input=json.dumps(request), capture_output=True, text=True,
        timeout=60, check=True,
    )
    answer = json.loads(done.stdout)
    assert answer["ours_verifies"] is True, "aics-tlog accepts the tests' witness cosignature"

    witness = Witness.parse(answer["vkey"])
    cosigned = note.rstrip("\n") + "\n" + answer["line"] + "\n"
    assert verify_cosignatures(parse_checkpoint(cosigned, log_key), [witness], 1) == ["aics.example/w"]
    blob = bytearray(base64.b64decode(answer["line"].rsplit(" ", 1)[1]))
    blob[-1] ^= 1
    altered = note.rstrip("\n") + "\n\u2014 aics.example/w " + base64.b64encode(bytes(blob)).decode() + "\n"
    with pytest.raises(CosignatureInvalid):
        verify_cosignatures(parse_checkpoint(altered, log_key), [witness], 1)
