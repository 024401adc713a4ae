"""The client against a log with a real witness: Nexo submits its checkpoints to
``aics-witness`` (an independent C2SP tlog-witness from PyPI, NEXO_WITNESSES), serves the
cosignatures on ``/api/log/checkpoint``, and the client requires them."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contracts.server import LocalServer
from nexo_client import CosignatureInvalid, Witness
from tests.client.conftest import ClientFactory, Inbox, new_name
from tests.conftest import ServerFactory
from tests.support.aics import AicsWitness
from tests.support.log_writer import log_vkey
from tests.support.realtime import FAST_ENV

pytestmark = pytest.mark.server


@pytest.fixture
def witnessed(make_server: ServerFactory, tmp_path: Path) -> Iterator[tuple[LocalServer, AicsWitness]]:
    witness = AicsWitness(tmp_path / "witness", "witness.test/w1")
    server = make_server({**FAST_ENV, "NEXO_WITNESSES": f"{witness.url} {witness.vkey}",
                          "NEXO_WITNESS_QUORUM": "1", "NEXO_WITNESS_INTERVAL": "0.3"})
    key = httpx.get(f"{server.base_url}/api/log/key", timeout=10).json()
    witness.trust(key["origin"], log_vkey(key["origin"], base64.b64decode(key["public_key"])))
    witness.start()
    try:
        yield server, witness
    finally:
        witness.stop()


async def wait_cosigned(server: LocalServer, tree_size: int, timeout: float = 30) -> None:
    """Until the served checkpoint covers ``tree_size`` leaves and carries a cosignature."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            answer = await http.get(f"{server.base_url}/api/log/checkpoint")
            size = int(answer.text.split("\n")[1])
            if size >= tree_size and int(answer.headers.get("nexo-checkpoint-cosignatures", 0)) >= 1:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"no cosigned checkpoint of {tree_size} leaves within {timeout} s")


async def test_keys_are_used_only_under_a_cosigned_checkpoint(
    witnessed: tuple[LocalServer, AicsWitness], make_client: ClientFactory, tmp_path: Path
) -> None:
    server, witness = witnessed
    alice_name, bob_name = new_name("alice"), new_name("bob")
    options = {"witnesses": [witness.vkey], "witness_quorum": 1}
    alice = await make_client(server.base_url, alice_name, **options)
    bob = await make_client(server.base_url, bob_name, **options)
    await wait_cosigned(server, 4)  # both devices' two keys each

    report = await alice.verify(bob_name)
    assert report["cosignatures"] == [witness.name]
    assert {d["key_type"] for d in report["devices"]} == {"ed25519", "x25519"}
    inbox = Inbox()
    bob.on_message(inbox)
    bob.start()
    alice.start()
    await alice.wait_acked(await alice.send(bob_name, "witnessed"))
    assert await inbox.wait(1) == ["witnessed"]

    # A client that trusts another witness refuses this log's checkpoints: quorum not met.
    stranger = Witness("witness.test/other", bytes(range(32)))
    carol = await make_client(server.base_url, new_name("carol"), witnesses=[stranger])
    before = carol.store.snapshot()
    with pytest.raises(CosignatureInvalid, match="quorum"):
        await carol.send(bob_name, "never sent")
    assert carol.store.snapshot() == before
