"""Hostile WebSocket clients (issue 14, findings 2 and 3), real server, real sockets.

The attacker's socket never reads: its small receive buffer and the server's send buffer
fill with pushes, so the server's write path is stuck. Each test ends the session the way
an owner would (logout, refresh-token reuse, account deletion) or lets the token expire,
and proves the server drops the socket within the bound (docs/security.md "Sessions that
end") and that a ``send`` written on it afterwards is never stored nor pushed, while the
honest clients around it keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from contracts.client import Account
from contracts.server import LocalServer
from tests.conftest import ServerFactory, server_factory
from tests.support.hostile import NonReader, server_rss
from tests.support.realtime import (
    FAST_ENV,
    account,
    close_code,
    count_rows,
    frames_within,
    next_frame,
    online,
    open_ws,
    send_and_ack,
    send_frame,
)

pytestmark = pytest.mark.server

#: What the server promises (1 s) plus room for a loaded CI machine.
DROP_BOUND = 3.0
#: Pushed to the non-reader: far more than its receive buffer and the server's send buffer.
FLOOD_BODY = "x" * 48_000
FLOOD_COUNT = 200


async def flood(ws: ClientConnection, to: str, count: int = FLOOD_COUNT) -> None:
    """Send ``count`` large messages to ``to`` and wait for every ack."""
    ids = {str(uuid.uuid4()) for _ in range(count)}
    for mid in ids:
        await ws.send(send_frame(to, FLOOD_BODY, mid))
    acked: set[str] = set()
    while acked != ids:
        frame = await next_frame(ws, timeout=60)
        if frame.get("message_id") in ids:
            assert frame["type"] == "ack", frame
            acked.add(frame["message_id"])


async def stuck_victim(server: Any, sender: ClientConnection, victim: Account) -> NonReader:
    """The victim's non-reading socket, with the server's write path to it stuck."""
    reader = NonReader(server, victim.access_token)
    assert reader.upgraded, reader.status
    await asyncio.sleep(0.5)  # authenticated and registered for pushes
    await flood(sender, victim.username)
    assert reader.wait_server_backlog(10), "the server's send buffer towards the non-reader is empty"
    assert reader.is_open()
    return reader


async def assert_dropped_and_deaf(
    server: Any, reader: NonReader, victim: Account, witness: ClientConnection, witness_name: str
) -> None:
    """Dropped within the bound; a send written on it afterwards is never stored nor pushed."""
    elapsed = reader.wait_dropped(DROP_BOUND)
    assert elapsed is not None, f"the non-reading socket is still open {DROP_BOUND} s after its session ended"
    late = str(uuid.uuid4())
    reader.send_text(send_frame(witness_name, "sent after the session ended", late))
    pushed = await frames_within(witness, 1.5)
    assert late not in {f.get("message_id") for f in pushed}
    assert count_rows(server, late) == 0
    reader.close()


#: The session tests give the non-reader a large outbox, so that only the revocation (or
#: the write timeout) can end it: the outbox bound would otherwise drop it first.
BIG_OUTBOX = {**FAST_ENV, "NEXO_WS_OUTBOX_BYTES": str(256 * 1024 * 1024)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with server_factory(tmp_path_factory.mktemp("hostile")) as make:
        yield make(BIG_OUTBOX)


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with server_factory(tmp_path_factory.mktemp("hostile-default")) as make:
        yield make(FAST_ENV)


@pytest.fixture
def expiring_server(make_server: ServerFactory) -> LocalServer:
    return make_server({**BIG_OUTBOX, "NEXO_ACCESS_TOKEN_TTL": "8"})


@pytest.fixture
def write_timeout_server(make_server: ServerFactory) -> LocalServer:
    return make_server({**BIG_OUTBOX, "NEXO_WS_WRITE_TIMEOUT": "1"})


@pytest.fixture
def small_outbox_server(make_server: ServerFactory) -> LocalServer:
    return make_server({**FAST_ENV, "NEXO_WS_OUTBOX_BYTES": "65536"})


@pytest.fixture
def two_workers(make_server: ServerFactory, backend: str) -> LocalServer:
    if backend != "postgres":
        pytest.skip("several workers need PostgreSQL")
    return make_server(BIG_OUTBOX, workers=2)


async def revoked_then_deaf(
    server: LocalServer,
    reader: NonReader,
    victim: Account,
    sender: ClientConnection,
    sender_name: str,
    sender_lives: bool = True,
) -> None:
    """The session was just ended: a ``send`` written at once and one written after the
    drop are never stored nor pushed; the honest sender is still served."""
    at_once = str(uuid.uuid4())
    reader.send_text(send_frame(sender_name, "sent just after the session ended", at_once))
    await assert_dropped_and_deaf(server, reader, victim, sender, sender_name)
    assert count_rows(server, at_once) == 0
    if sender_lives:
        assert (await send_and_ack(sender, sender_name, "the sender is fine"))["type"] == "ack"


async def test_non_reader_outlives_logout(server: LocalServer) -> None:
    alice, bob = account(server), account(server)
    sender = await online(server, alice.access_token)
    victim = Account(bob.base_url, bob.username, bob.password, bob.user_id, "", "")
    victim.relogin()  # bob's second session: the one whose socket never reads
    reader = await stuck_victim(server, sender, victim)
    honest_bob = await online(server, bob.access_token)  # bob's first session, an honest client

    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{server.base_url}/api/auth/logout", headers=victim.headers)
    assert response.status_code in (200, 204), response.text
    # Written right after the logout answered: the revocation point is behind it.
    at_once = str(uuid.uuid4())
    reader.send_text(send_frame(alice.username, "sent just after logout", at_once))
    await assert_dropped_and_deaf(server, reader, victim, sender, alice.username)
    assert count_rows(server, at_once) == 0

    # Honest clients are untouched: bob's other session and alice still send and receive.
    ack = await send_and_ack(honest_bob, alice.username, "still here")
    assert ack["type"] == "ack"
    assert (await next_frame(sender, "message"))["message_id"] == ack["message_id"]
    await sender.close()
    await honest_bob.close()


async def test_non_reader_outlives_refresh_reuse_revocation(server: LocalServer) -> None:
    alice, bob = account(server), account(server)
    sender = await online(server, alice.access_token)
    reader = await stuck_victim(server, sender, bob)

    async with httpx.AsyncClient(timeout=10) as http:
        url, spent = f"{server.base_url}/api/auth/refresh", {"refresh_token": bob.refresh_token}
        assert (await http.post(url, json=spent)).status_code == 200
        assert (await http.post(url, json=spent)).status_code == 401
    await revoked_then_deaf(server, reader, bob, sender, alice.username)
    await sender.close()


async def test_non_reader_outlives_account_deletion(server: LocalServer) -> None:
    alice, bob = account(server), account(server)
    sender = await online(server, alice.access_token)
    reader = await stuck_victim(server, sender, bob)

    assert bob.delete() in (200, 204)
    await revoked_then_deaf(server, reader, bob, sender, alice.username)
    await sender.close()


async def test_non_reader_outlives_token_expiry(expiring_server: LocalServer) -> None:
    server = expiring_server
    alice, bob = account(server), account(server)
    bob.relogin()
    exp = jwt.decode(bob.access_token, options={"verify_signature": False})["exp"]
    sender = await online(server, alice.access_token)
    reader = await stuck_victim(server, sender, bob)
    assert time.time() < exp - 0.5, "the flood took longer than the token's lifetime"

    await asyncio.sleep(exp - time.time() + 0.2)
    # The sender's token expires with the same short lifetime: only the victim is checked.
    await revoked_then_deaf(server, reader, bob, sender, alice.username, sender_lives=False)
    await sender.close()


async def test_non_reader_is_dropped_after_write_timeout(write_timeout_server: LocalServer) -> None:
    server = write_timeout_server
    alice, bob = account(server), account(server)
    sender = await online(server, alice.access_token)
    started = time.monotonic()
    reader = NonReader(server, bob.access_token)
    assert reader.upgraded, reader.status
    await asyncio.sleep(0.5)
    await flood(sender, bob.username)
    # Its session is live: only the write timeout (1 s here) ends it.
    elapsed = reader.wait_dropped(1.0 + 10.0)
    assert elapsed is not None, "a client that reads nothing is still connected"
    assert time.monotonic() - started > 1.0
    late = str(uuid.uuid4())
    reader.send_text(send_frame(alice.username, "never", late))
    await asyncio.sleep(1.0)
    assert count_rows(server, late) == 0
    reader.close()
    # The honest sender, flooded with acks it reads, is still connected and served.
    assert (await send_and_ack(sender, bob.username, "after"))["type"] == "ack"
    await sender.close()


async def test_non_reader_outlives_logout_on_another_worker(two_workers: LocalServer) -> None:
    server = two_workers
    alice, bob = account(server), account(server)
    sender = await online(server, alice.access_token)
    reader = await stuck_victim(server, sender, bob)
    # Whichever worker answers the logout, the socket's worker learns it by its poll.
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{server.base_url}/api/auth/logout", headers=bob.headers)
    assert response.status_code in (200, 204), response.text
    await assert_dropped_and_deaf(server, reader, bob, sender, alice.username)
    await sender.close()


async def test_sends_written_after_logout_on_other_workers_are_never_stored(two_workers: LocalServer) -> None:
    """The other workers learn of a logout by a poll (0.5 s); a frame they read meanwhile must
    still not be stored: the insert checks the sender's session. Sockets spread over both
    workers; each writes a ``send`` the moment the logout is answered."""
    server = two_workers
    alice, bob = account(server), account(server)
    for _ in range(3):
        alice.relogin()
        sockets = [await online(server, alice.access_token) for _ in range(8)]
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{server.base_url}/api/auth/logout", headers=alice.headers)
        assert response.status_code == 200, response.text
        late = [str(uuid.uuid4()) for _ in sockets]
        for ws, mid in zip(sockets, late, strict=True):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(send_frame(bob.username, "written after logout answered", mid))
        await asyncio.sleep(1.5)
        stored = [mid for mid in late if count_rows(server, mid)]
        assert not stored, f"{len(stored)} of {len(late)} sends written after logout were stored"
        for ws in sockets:
            await ws.close()


# -- memory per connection (finding 3) -------------------------------------------------------

#: History replayed by every ``sync`` of the storm: 1,000 messages of 4 KB.
HISTORY = 1000
HISTORY_BODY = "h" * 4000
#: What the attack may add to the server's RSS. Without the bounds the storm below queues
#: 4 sockets x 12 replays x 4 MB (about 190 MB); with them each socket holds at most its
#: outbox (1 MiB) plus one page of rows and what the transport buffered.
RSS_GROWTH_BOUND = 64 * 1024 * 1024


async def test_sync_storms_and_frame_floods_from_non_readers_keep_memory_bounded(
    default_server: LocalServer,
) -> None:
    server = default_server
    alice, bob, carol = account(server), account(server), account(server)
    sender = await online(server, alice.access_token)
    ids = [str(uuid.uuid4()) for _ in range(HISTORY)]
    for start in range(0, HISTORY, 100):
        for mid in ids[start : start + 100]:
            await sender.send(send_frame(bob.username, HISTORY_BODY, mid))
        pending = set(ids[start : start + 100])
        while pending:
            frame = await next_frame(sender, timeout=60)
            pending.discard(frame.get("message_id", ""))
    honest_carol = await online(server, carol.access_token)
    await asyncio.sleep(1.0)
    before = server_rss(server)

    storms = [NonReader(server, bob.access_token) for _ in range(4)]
    flooder = NonReader(server, alice.access_token)
    assert all(r.upgraded for r in [*storms, flooder])
    await asyncio.sleep(0.5)
    for reader in storms:
        for _ in range(12):
            reader.send_text('{"type":"sync","since":0}')
    flooder.send_many("not json", 20_000)
    flooder.send_many('{"type":"delivered","message_id":"00000000-0000-0000-0000-000000000000"}', 5_000)

    peak = before
    for _ in range(16):
        await asyncio.sleep(0.5)
        peak = max(peak, server_rss(server))
        # An honest pair keeps its latency and its messages meanwhile.
        ack = await send_and_ack(honest_carol, alice.username, "honest", None)
        assert ack["type"] == "ack", ack
        assert (await next_frame(sender, "message"))["message_id"] == ack["message_id"]
    growth = peak - before
    assert growth < RSS_GROWTH_BOUND, f"the server grew by {growth / 2**20:.0f} MiB under the storm"
    for reader in [*storms, flooder]:
        reader.close()
    await sender.close()
    await honest_carol.close()


def closes(server: LocalServer, code: int) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    match = re.search(rf'^nexo_ws_closes_total{{code="{code}"}} ([0-9.e+-]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_non_reader_over_its_outbox_bytes_gets_1008(small_outbox_server: LocalServer) -> None:
    server = small_outbox_server
    alice, bob = account(server), account(server)
    sender = await online(server, alice.access_token)
    reader = NonReader(server, bob.access_token)
    assert reader.upgraded, reader.status
    await asyncio.sleep(0.5)
    await flood(sender, bob.username)
    # Long before the 30 s write timeout: the 64 KiB outbox overflowed.
    assert reader.wait_dropped(10.0) is not None, "a consumer over its outbox bound is still connected"
    assert closes(server, 1008) >= 1
    reader.close()
    assert (await send_and_ack(sender, bob.username, "after"))["type"] == "ack"
    await sender.close()



# -- budgets and caps (finding 3) ------------------------------------------------------------

BAD_FRAME = '{"type":"nonsense","pad":"' + "p" * 1000 + '"}'


@pytest.fixture
def budget_server(make_server: ServerFactory) -> LocalServer:
    return make_server(
        {
            **FAST_ENV,
            "NEXO_WS_FRAME_RATE": "100/second",
            "NEXO_WS_MAX_CONNECTIONS_PER_USER": "3",
            "NEXO_WS_MAX_PENDING_PER_ADDRESS": "5",
        }
    )


async def test_invalid_frame_flood_is_metered_by_the_frame_budget(budget_server: LocalServer) -> None:
    server = budget_server
    alice, bob = account(server), account(server)
    flooder = await open_ws(server, alice.access_token, max_queue=None)
    honest = await online(server, bob.access_token)
    for _ in range(3000):
        await flooder.send(BAD_FRAME)
    answered = [f for f in await frames_within(flooder, 3.0) if f.get("type") == "error"]
    # 100 of burst, 100/s for 3 s, and at most one socket read (256 KiB) of frames past it.
    assert len(answered) <= 100 + 300 + 300, f"{len(answered)} invalid frames answered in 3 s"
    assert answered, "the flooder got no answer at all"
    # Another client's sends are not slowed by the flooder's budget.
    assert (await send_and_ack(honest, alice.username, "honest"))["type"] == "ack"
    await flooder.close()
    await honest.close()


async def test_sync_storm_is_paced_by_the_frame_budget(budget_server: LocalServer) -> None:
    """A ``sync`` costs the budget by what it replays (a frame a row and a frame a KiB): a
    client repeating syncs of a long history is paced like a frame flood."""
    server = budget_server
    alice, bob = account(server), account(server)
    sender = await online(server, alice.access_token)
    for _ in range(20):
        assert (await send_and_ack(sender, bob.username, "s" * 4000))["type"] == "ack"
    storm = await online(server, bob.access_token)
    for _ in range(20):
        await storm.send(json.dumps({"type": "sync", "since": 0}))
    seen = await frames_within(storm, 3.0)
    synced = sum(1 for f in seen if f.get("type") == "synced")
    # Each replay costs ~100 frames: 100 of burst and 100/s for 3 s pay for about 4 of them
    # (the old code replayed all 20 at once).
    assert 1 <= synced <= 8, f"{synced} of 20 syncs of an 80 KB history replayed in 3 s"
    # Another client is not slowed by the storm's budget.
    assert (await send_and_ack(sender, bob.username, "honest"))["type"] == "ack"
    await storm.close()
    await sender.close()


@pytest.fixture
def sync_budget_server(make_server: ServerFactory) -> LocalServer:
    return make_server({**FAST_ENV, "NEXO_WS_SYNC_RATE": "200/second"})


async def test_sync_storm_from_many_connections_of_one_user_is_paced_per_user(
    sync_budget_server: LocalServer,
) -> None:
    """The replay budget is the user's, shared by its connections (each of which is well
    within its own frame budget here): four connections syncing a 370 KB history ten
    times each replay the burst and one page each, then wait for the budget to refill."""
    server = sync_budget_server
    alice, bob, carol = account(server), account(server), account(server)
    sender = await online(server, alice.access_token)
    for _ in range(90):  # one page: a replay costs ~460 (90 rows and ~370 KiB)
        assert (await send_and_ack(sender, bob.username, "s" * 4000))["type"] == "ack"
    for _ in range(5):
        assert (await send_and_ack(sender, carol.username, "for carol"))["type"] == "ack"
    storms = [await online(server, bob.access_token) for _ in range(4)]
    for ws in storms:
        for _ in range(10):
            await ws.send(json.dumps({"type": "sync", "since": 0}))
    # Another user's sync (an honest reconnect) is not slowed by bob's budget.
    honest = await online(server, carol.access_token)
    started = time.monotonic()
    await honest.send(json.dumps({"type": "sync", "since": 0}))
    replay = [f for f in await frames_until_synced(honest) if f.get("type") == "message"]
    assert len(replay) == 5 and time.monotonic() - started < 2.0
    seen = await asyncio.gather(*(frames_within(ws, 3.0) for ws in storms))
    synced = sum(1 for frames in seen for f in frames if f.get("type") == "synced")
    # 200 of burst and 200/s for 3 s pay for ~2 replays, plus one page in flight per
    # connection: at most ~6 (the old code replayed all 40, each connection in its burst).
    assert 1 <= synced <= 10, f"{synced} of 40 syncs of a 370 KB history replayed in 3 s"
    for ws in [*storms, honest, sender]:
        await ws.close()


async def frames_until_synced(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = [await next_frame(ws)]
    while frames[-1].get("type") != "synced":
        frames.append(await next_frame(ws))
    return frames


async def test_connections_over_the_per_user_cap_close_with_4429(budget_server: LocalServer) -> None:
    server = budget_server
    alice, bob = account(server), account(server)
    held = [await online(server, alice.access_token) for _ in range(3)]
    extra = await open_ws(server, alice.access_token)
    code, reason = await close_code(extra)
    assert code == 4429, (code, reason)
    # Other users, and alice's open connections, are untouched.
    other = await online(server, bob.access_token)
    assert (await send_and_ack(held[0], bob.username, "still works"))["type"] == "ack"
    await held.pop().close()
    await asyncio.sleep(0.5)
    held.append(await online(server, alice.access_token))  # a freed slot is usable again
    for ws in [*held, other]:
        await ws.close()


async def test_unauthenticated_upgrades_over_the_per_address_cap_get_429(budget_server: LocalServer) -> None:
    server = budget_server
    users = [account(server) for _ in range(6)]
    waiting = [await open_ws(server) for _ in range(5)]  # upgraded, never authenticated
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(server)
    assert refused.value.response.status_code == 429
    # Once they authenticate (or time out), the address may upgrade again.
    for ws, user in zip(waiting, users, strict=False):
        await ws.send(json.dumps({"type": "auth", "token": user.access_token}))
        await ws.send(json.dumps({"type": "sync", "since": 2**53}))
        await next_frame(ws, "synced")
    late = await online(server, users[5].access_token)
    for ws in [*waiting, late]:
        await ws.close()
