"""Exactly once, end to end: every message reaches the receiving application once, none lost,
through a client restart mid-outbox, dropped acks, reset connections and a server kill -9."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contracts.server import LocalServer
from nexo_client import NexoClient
from tests.client.conftest import ClientFactory, Inbox, new_name
from tests.conftest import REDIS_URL, ServerFactory
from tests.support.proxy import fault_proxy
from tests.support.realtime import FAST_ENV, duplicate_rows, stored_seqs

pytestmark = pytest.mark.server

FAST_RETRY = {"ack_timeout": 1.0, "reconnect_base": 0.1, "reconnect_max": 1.0}


def assert_exactly_once(inbox: Inbox, sent: list[str], server: LocalServer) -> None:
    assert sorted(inbox.texts) == sorted(sent), "each message handed to the application exactly once"
    assert len({m.seq for m in inbox.messages}) == len(sent)
    assert duplicate_rows(server) == []


async def test_the_sender_restarts_mid_outbox_and_acks_are_dropped_and_sockets_reset(
    nexo: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    alice_name, bob_name = new_name("alice"), new_name("bob")
    alice_state = tmp_path / "alice"
    await (await make_client(nexo.base_url, alice_name, state=alice_state)).close()
    with fault_proxy(nexo.base_url, "client_drop_acks", tmp_path / "proxy.log") as url:
        bob = await make_client(url, bob_name, **FAST_RETRY)
        inbox = Inbox()
        bob.on_message(inbox)
        bob.start()
        alice = await make_client(url, state=alice_state, key_cache_seconds=60, **FAST_RETRY)
        alice.start()
        sent = [f"m{i}" for i in range(30)]
        for text in sent[:15]:
            await alice.send(bob_name, text)
        await alice.close()  # mid-outbox: some stored, some not, acks lost on the way
        left = len(NexoClient(url, alice_state).store.pending())
        alice = await make_client(url, state=alice_state, key_cache_seconds=60, **FAST_RETRY)
        alice.start()
        for text in sent[15:]:
            await alice.send(bob_name, text)
        await alice.flush(timeout=60)
        await inbox.wait(len(sent), timeout=60)
        await asyncio.sleep(1.5)  # anything resent late would show up as a second delivery
    assert left > 0, "the restart happened with messages still in the outbox"
    # bob's first connection is reset after at most 14 frames and he gets more than 30.
    assert bob.connects > 1, "the proxy reset the connections"
    assert_exactly_once(inbox, sent, nexo)


async def kill_mid_send(server: LocalServer, make_client: ClientFactory) -> None:
    alice_name, bob_name = new_name("alice"), new_name("bob")
    bob = await make_client(server.base_url, bob_name, **FAST_RETRY)
    alice = await make_client(server.base_url, alice_name, key_cache_seconds=300, **FAST_RETRY)
    inbox = Inbox()
    bob.on_message(inbox)
    bob.start()
    alice.start()
    sent = [f"k{i}" for i in range(40)]
    for i, text in enumerate(sent):
        await alice.send(bob_name, text)
        if i == 15:
            server.kill()  # SIGKILL, mid-send: the rest queue in the outbox meanwhile
    await asyncio.sleep(0.5)
    server.start()
    await alice.flush(timeout=90)
    await inbox.wait(len(sent), timeout=90)
    await asyncio.sleep(1.5)
    assert_exactly_once(inbox, sent, server)
    assert len(stored_seqs(server)) >= len(sent)


async def test_kill_9_mid_send_delivers_everything_once(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    await kill_mid_send(make_server(FAST_ENV), make_client)


async def test_kill_9_mid_send_on_postgresql_with_two_workers(
    make_server: ServerFactory, make_client: ClientFactory, pg_url: str
) -> None:
    server = make_server({**FAST_ENV, "DATABASE_URL": pg_url, "REDIS_URL": REDIS_URL}, workers=2)
    await kill_mid_send(server, make_client)


@pytest.fixture(autouse=True)
def _quiet_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="nexo_client")
