"""A hostile server (the fault proxy in front of a real one) → a named exception,
the client's state unchanged, nothing sent."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from contracts.server import LocalServer
from nexo_client import (
    CosignatureInvalid,
    NexoClient,
    ProofInvalid,
    SignatureInvalid,
    SplitViewDetected,
    VerificationFailed,
    Witness,
)
from nexo_client.log import TreeHead
from tests.client.conftest import PASSWORD, ClientFactory, Inbox, new_name, signing_key_file
from tests.support.proxy import fault_proxy

pytestmark = pytest.mark.server


@pytest.fixture
def pair(nexo: LocalServer, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """alice (state in the returned dir, registered directly) and bob, on the real server."""
    import asyncio

    alice, bob = new_name("alice"), new_name("bob")

    async def setup() -> None:
        # carol registers last, so the log grew after alice's last verified tree head.
        carol = new_name("carol")
        for name, state in ((bob, tmp_path / "bob"), (alice, tmp_path / "alice"), (carol, tmp_path / "c")):
            client = NexoClient(nexo.base_url, state)
            await client.register(name, PASSWORD)
            await client.close()

    asyncio.run(setup())
    yield alice, bob, tmp_path / "alice"


def sent_by(server: LocalServer, username: str) -> int:
    with sqlite3.connect(server.data_dir / "nexo.db") as db:
        return int(db.execute(
            "SELECT COUNT(*) FROM messages WHERE sender_id = (SELECT id FROM users WHERE username = ?)",
            (username,),
        ).fetchone()[0])


async def attempt_send(url: str, state: Path, bob: str, **options: object) -> tuple[Exception, dict, dict]:
    """Send to bob through ``url``; the exception and the state before and after."""
    client = NexoClient(url, state, key_cache_seconds=0, **options)  # type: ignore[arg-type]
    try:
        before = client.store.snapshot()
        with pytest.raises(VerificationFailed) as caught:
            await client.send(bob, "must never leave this machine")
        return caught.value, before, client.store.snapshot()
    finally:
        await client.close()


CASES = [
    ("client_fork_sth", SplitViewDetected, "not consistent"),
    ("client_swap_key", ProofInvalid, "differs from the key in the log"),
    ("client_strip_proof", ProofInvalid, "inclusion proof"),
    ("sth_bad_signature", SignatureInvalid, "not signed by the pinned log key"),
]


@pytest.mark.parametrize(("fault", "error", "says"), CASES, ids=[c[0] for c in CASES])
async def test_a_tampered_answer_raises_the_named_exception_and_changes_nothing(
    nexo: LocalServer, pair: tuple[str, str, Path], tmp_path: Path, fault: str,
    error: type[Exception], says: str,
) -> None:
    alice, bob, state = pair
    extra = ("--signing-key", str(signing_key_file(nexo))) if fault == "client_fork_sth" else ()
    with fault_proxy(nexo.base_url, fault, tmp_path / "proxy.log", *extra) as url:
        exc, before, after = await attempt_send(url, state, bob)
    assert type(exc) is error, repr(exc)
    assert says in str(exc)
    assert after == before
    assert sent_by(nexo, alice) == 0


async def test_registration_with_a_stripped_proof_is_refused(
    nexo: LocalServer, pair: tuple[str, str, Path], make_client: ClientFactory, tmp_path: Path
) -> None:
    with fault_proxy(nexo.base_url, "client_strip_proof", tmp_path / "proxy.log") as url:
        client = await make_client(url)
        with pytest.raises(ProofInvalid):
            await client.register(new_name(), PASSWORD)
        assert client.store.get("device") is None


async def test_witness_cosignatures_are_required_when_configured(
    nexo: LocalServer, pair: tuple[str, str, Path], tmp_path: Path, witness_key: tuple[Path, Witness],
    make_client: ClientFactory,
) -> None:
    alice, bob, state = pair
    key_file, witness = witness_key
    # The proxy plays a witness that cosigns every checkpoint: the client accepts and says so.
    witness_args = ("--witness-key", str(key_file))
    with fault_proxy(nexo.base_url, "client_cosign", tmp_path / "good.log", *witness_args) as url:
        client = await make_client(url, state=state, witnesses=[witness.vkey()])
        report = await client.verify(bob)
        assert report["cosignatures"] == [witness.name]
        await client.close()
        # Not configured here: the cosigner is named, and said to be unchecked.
        client = await make_client(url, state=state)
        assert (await client.verify(bob))["unchecked_cosigners"] == [witness.name]
        await client.close()
    # A cosignature that does not verify.
    with fault_proxy(nexo.base_url, "client_bad_cosignature", tmp_path / "bad.log", *witness_args) as url:
        exc, before, after = await attempt_send(url, state, bob, witnesses=[witness])
    assert isinstance(exc, CosignatureInvalid) and "does not verify" in str(exc)
    assert after == before
    # No cosignature at all (this server has no witness): the quorum is not met.
    exc, before, after = await attempt_send(nexo.base_url, state, bob, witnesses=[witness])
    assert isinstance(exc, CosignatureInvalid) and "quorum" in str(exc)
    assert after == before
    assert sent_by(nexo, alice) == 0


async def test_an_older_tree_head_is_accepted_only_as_a_prefix_of_the_trusted_one(
    nexo: LocalServer, pair: tuple[str, str, Path]
) -> None:
    """With witnesses the served checkpoint is the newest *cosigned* head, which may be older
    than one the client saw: fine if the trusted head extends it, a split view otherwise."""
    _, bob, state = pair
    client = NexoClient(nexo.base_url, state)
    try:
        await client.keys_of(bob, fresh=True)
        trusted = client.verifier.trusted()
        assert trusted is not None and trusted.index >= 3
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{nexo.base_url}/api/sth/{trusted.index - 2}")
        older = TreeHead.from_json(answer.json())
        lookup = await client.verifier.extend(older)
        assert lookup.head == older and client.verifier.trusted() == trusted

        key = serialization.load_pem_private_key(signing_key_file(nexo).read_bytes(), password=None)
        forged = replace(older, root_hash=hashlib.sha256(older.root_hash).digest())
        forged = replace(forged, signature=key.sign(forged.body))  # type: ignore[union-attr, call-arg]
        forged.verify(await client.verifier.log_key())  # validly signed by the log, yet a fork
        with pytest.raises(SplitViewDetected, match="not consistent"):
            await client.verifier.extend(forged)
        assert client.verifier.trusted() == trusted
    finally:
        await client.close()


async def test_a_message_replayed_under_another_seq_is_handed_over_once(
    nexo: LocalServer, pair: tuple[str, str, Path], make_client: ClientFactory, tmp_path: Path
) -> None:
    _, bob, _ = pair
    with fault_proxy(nexo.base_url, "client_replay", tmp_path / "proxy.log") as url:
        receiver = await make_client(url, state=tmp_path / "bob")
        inbox = Inbox()
        receiver.on_message(inbox)
        receiver.start()
        sender = await make_client(nexo.base_url, state=tmp_path / "alice")
        sender.start()
        for text in ("one", "two"):
            await sender.wait_acked(await sender.send(bob, text))
        assert await inbox.wait(2) == ["one", "two"]
        await asyncio.sleep(2)
    assert inbox.texts == ["one", "two"]
