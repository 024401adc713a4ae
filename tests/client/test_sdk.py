"""The SDK against a real server: packaging, a conversation, sessions, device identity, revocation."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from contracts.server import LocalServer
from nexo_client import NexoClient, NotLoggedIn, SessionRevoked
from tests.client.conftest import ClientFactory, Inbox, new_name
from tests.conftest import ServerFactory
from tests.support.realtime import FAST_ENV

pytestmark = pytest.mark.server


def test_the_distribution_needs_none_of_the_servers_dependencies() -> None:
    requires = [r.split(">")[0].split("<")[0].split("=")[0].strip().lower()
                for r in importlib.metadata.requires("nexo-client") or []]
    assert set(requires) == {"httpx", "websockets", "cryptography"}
    code = ("import sys, nexo_client, nexo_client.cli; "
            "bad = [m for m in ('sanic', 'tortoise', 'asyncpg', 'nexo') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


async def test_a_conversation_reaches_both_sides_and_the_server_stores_only_ciphertext(
    nexo: LocalServer, make_client: ClientFactory
) -> None:
    alice_name, bob_name = new_name("alice"), new_name("bob")
    alice = await make_client(nexo.base_url, alice_name)
    bob = await make_client(nexo.base_url, bob_name)
    alice_phone = await make_client(nexo.base_url, alice_name, register=False, login=True, sync_interval=1)
    bob_inbox, alice_inbox, phone_inbox = Inbox(), Inbox(), Inbox()
    alice.on_message(alice_inbox)
    alice_phone.on_message(phone_inbox)
    for client in (alice, bob, alice_phone):
        client.start()

    secret = "the eagle lands at " + new_name("dawn")
    await alice.wait_acked(await alice.send(bob_name, secret))
    assert await bob.listen(bob_inbox, count=1, timeout=20) == 1
    await bob.wait_acked(await bob.send(alice_name, "ack " + secret))
    await alice_inbox.wait(1)
    await phone_inbox.wait(2)

    [got] = bob_inbox.messages
    assert (got.sender, got.to, got.text) == (alice_name, bob_name, secret)
    assert alice_inbox.texts == ["ack " + secret]
    # The sender's other device gets its own copy of what alice sent, and what she received.
    assert sorted(phone_inbox.texts) == sorted([secret, "ack " + secret])

    with sqlite3.connect(nexo.data_dir / "nexo.db") as db:
        rows = db.execute(
            "SELECT body FROM messages WHERE sender_id IN (SELECT id FROM users WHERE username IN (?, ?))",
            (alice_name, bob_name),
        ).fetchall()
    assert len(rows) == 2
    for (body,) in rows:
        assert secret not in body and "eagle" not in body
        envelope = json.loads(body)
        assert envelope["v"] == 1 and envelope["recipients"] and envelope["sig"]


async def test_device_keys_are_private_files_and_proven_in_the_log(
    nexo: LocalServer, make_client: ClientFactory
) -> None:
    name = new_name()
    client = await make_client(nexo.base_url, name)
    for path in (client.store.identity_path, client.store.dir / "client.db"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(client.store.dir.stat().st_mode) == 0o700
    device = client.store.get("device")
    listed = {d["id"]: d for d in await client.devices()}
    assert {listed[device[t]["id"]]["key_type"] for t in ("ed25519", "x25519")} == {"ed25519", "x25519"}
    trusted = client.verifier.trusted()
    assert trusted is not None and trusted.tree_size > device["x25519"]["leaf_index"]
    keys = await client.keys_of(name, fresh=True)
    assert {k.device_id for k in keys} == {device["ed25519"]["id"], device["x25519"]["id"]}


async def test_the_session_refreshes_before_the_access_token_expires(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = make_server({**FAST_ENV, "NEXO_ACCESS_TOKEN_TTL": "6"})  # refreshed 2.8 s before expiry
    alice_name, bob_name = new_name(), new_name()
    alice = await make_client(server.base_url, alice_name)
    bob = await make_client(server.base_url, bob_name)
    inbox = Inbox()
    bob.on_message(inbox)
    bob.start()
    alice.start()
    await asyncio.sleep(13)  # two token lifetimes
    await alice.wait_acked(await alice.send(bob_name, "still here"))
    await inbox.wait(1)
    assert alice.session.refreshes >= 2 and bob.session.refreshes >= 2
    assert bob.connects == 1, "the socket was re-authenticated in band, never closed with 4401"


async def test_a_reused_refresh_token_ends_the_session_with_a_clear_error(
    nexo: LocalServer, make_client: ClientFactory
) -> None:
    client = await make_client(nexo.base_url, new_name())
    stolen = client.store.get("session")["refresh"]
    # Someone with a copy of the refresh token uses it first: the client's copy is now a reuse.
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{nexo.base_url}/api/auth/refresh", json={"refresh_token": stolen})
    assert answer.status_code == 200
    with pytest.raises(SessionRevoked, match="log in again"):
        await client.session.access_token(force=True)
    assert client.store.get("session") is None
    with pytest.raises(NotLoggedIn):
        await client.devices()


async def test_a_revoked_device_stops_receiving(nexo: LocalServer, make_client: ClientFactory) -> None:
    alice_name, bob_name = new_name(), new_name()
    alice = await make_client(nexo.base_url, alice_name, key_cache_seconds=0)
    laptop = await make_client(nexo.base_url, bob_name)
    phone = await make_client(nexo.base_url, bob_name, register=False, login=True)
    laptop_inbox, phone_inbox = Inbox(), Inbox()
    laptop.on_message(laptop_inbox)
    phone.on_message(phone_inbox)
    for client in (alice, laptop, phone):
        client.start()
    await alice.wait_acked(await alice.send(bob_name, "before"))
    await phone_inbox.wait(1)

    for key in phone.store.get("device").values():
        await laptop.revoke_device(key["id"])
    await alice.wait_acked(await alice.send(bob_name, "after"))
    assert await laptop_inbox.wait(2) == ["before", "after"]
    await asyncio.sleep(2)
    assert phone_inbox.texts == ["before"]
    assert any("no entry for this device" in reason for _, reason in phone.rejected)


def test_state_directory_of_one_account_refuses_another(tmp_path: object, nexo: LocalServer) -> None:
    async def scenario() -> None:
        client = NexoClient(nexo.base_url, tmp_path / "state")  # type: ignore[operator]
        try:
            await client.register(new_name(), "correct horse battery")
            with pytest.raises(Exception, match="belongs to"):
                await client.login(new_name(), "correct horse battery")
        finally:
            await client.close()

    asyncio.run(scenario())


async def test_a_session_revoked_while_listening_stops_with_a_clear_error(
    nexo: LocalServer, make_client: ClientFactory
) -> None:
    client = await make_client(nexo.base_url, new_name())
    client.start()
    listening = asyncio.create_task(client.listen(Inbox(), timeout=60))
    await asyncio.sleep(1)
    stolen = client.store.get("session")["refresh"]
    async with httpx.AsyncClient() as http:
        for _ in range(2):  # the second use is a reuse: the server revokes the whole family
            await http.post(f"{nexo.base_url}/api/auth/refresh", json={"refresh_token": stolen})
    # The server closes the socket (4401); the client's refresh is refused: one clear error.
    with pytest.raises(SessionRevoked):
        await asyncio.wait_for(listening, 30)
    assert client.store.get("session") is None


async def test_a_failing_handler_is_reported_and_its_message_handed_over_again(
    nexo: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    alice_name, bob_name = new_name(), new_name()
    alice = await make_client(nexo.base_url, alice_name)
    bob = await make_client(nexo.base_url, bob_name, state=tmp_path / "bob")
    alice.start()
    await alice.wait_acked(await alice.send(bob_name, "one"))

    async def broken(message: object) -> None:
        raise RuntimeError("bug in the application")

    with pytest.raises(RuntimeError, match="bug in the application"):
        await bob.listen(broken, timeout=30)
    await bob.close()
    again = await make_client(nexo.base_url, state=tmp_path / "bob")
    inbox = Inbox()
    again.on_message(inbox)
    again.start()
    assert await inbox.wait(1) == ["one"]
