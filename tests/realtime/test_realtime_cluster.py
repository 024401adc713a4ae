"""Push across workers and server processes (PostgreSQL), and kill -9 durability (issue 4)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from contracts.server import LocalServer, random_secret
from tests.conftest import REDIS_URL, ServerFactory
from tests.support.realtime import (
    FAST_ENV,
    account,
    close_code,
    duplicate_rows,
    frames_within,
    next_frame,
    online,
    open_ws,
    send_and_ack,
    send_frame,
    stored_seqs,
)

pytestmark = pytest.mark.server


async def _pushes(ws: ClientConnection, want: set[str], timeout: float) -> dict[str, float]:
    """message_id -> arrival time, until ``want`` all arrived (then 0.5 s more to catch repeats)."""
    seen: dict[str, float] = {}
    repeats: list[str] = []
    deadline = time.monotonic() + timeout
    while not want <= set(seen) and time.monotonic() < deadline:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        except TimeoutError:
            break
        if frame.get("type") == "message":
            if frame["message_id"] in seen:
                repeats.append(frame["message_id"])
            seen.setdefault(frame["message_id"], time.monotonic())
    for frame in await frames_within(ws, 0.5):
        if frame.get("type") == "message":
            repeats.append(frame["message_id"])
    assert not repeats, f"pushed more than once: {repeats}"
    return seen


@pytest.mark.parametrize("broker", ["listen_notify", "redis"])
async def test_push_reaches_a_recipient_on_another_server_process(
    pg_url: str, make_server: ServerFactory, broker: str
) -> None:
    env = {**FAST_ENV, "DATABASE_URL": pg_url, "JWT_SECRET": random_secret()}
    if broker == "redis":
        env |= {"REDIS_URL": REDIS_URL, "NEXO_REDIS_PREFIX": f"t{uuid.uuid4().hex[:10]}"}
    first, second = make_server(env), make_server(env)
    sender, recipient = account(first), account(first)
    rx = [await online(second, recipient.access_token) for _ in range(2)]
    tx = await open_ws(first, sender.access_token)
    ids: dict[str, float] = {}
    for i in range(10):
        mid = str(uuid.uuid4())
        ids[mid] = time.monotonic()
        ack = await send_and_ack(tx, recipient.username, f"cross {i}", mid)
        assert ack["type"] == "ack"
    for ws in rx:
        arrived = await _pushes(ws, set(ids), timeout=10)
        assert set(arrived) == set(ids)
        worst = max(arrived[mid] - sent for mid, sent in ids.items())
        assert worst < 2.0, f"push took {worst:.3f} s"
    # a resend through the other process is a duplicate and is not pushed again
    resend = next(iter(ids))
    dup = await send_and_ack(
        await open_ws(second, sender.access_token), recipient.username, "cross 0", resend
    )
    assert dup["duplicate"] is True
    for ws in rx:
        assert not [f for f in await frames_within(ws, 0.5) if f.get("type") == "message"]
    for ws in [*rx, tx]:
        await ws.close()


async def test_push_reaches_every_connection_across_two_workers(
    make_server: ServerFactory, pg_url: str
) -> None:
    server = make_server({**FAST_ENV, "DATABASE_URL": pg_url}, workers=2)
    sender, recipient = account(server), account(server)
    # The kernel spreads connections over both workers; with 8 + 8 sockets all landing
    # on one worker is a 1 in 2^15 chance.
    rx = [await online(server, recipient.access_token) for _ in range(8)]
    tx = [await open_ws(server, sender.access_token) for _ in range(8)]
    ids = set()
    for i, ws in enumerate(tx):
        mid = str(uuid.uuid4())
        ids.add(mid)
        assert (await send_and_ack(ws, recipient.username, f"w{i}", mid))["type"] == "ack"
    for ws in rx:
        assert set(await _pushes(ws, ids, timeout=10)) == ids
    # concurrent resends on connections of both workers: one row, identical acks
    mid = str(uuid.uuid4())
    frame = send_frame(recipient.username, "storm", mid)
    await asyncio.gather(*(ws.send(frame) for ws in tx))
    acks = await asyncio.gather(*(next_frame(ws, "ack") for ws in tx))
    assert len({(a["seq"], a["server_ts"]) for a in acks}) == 1
    assert sum(not a["duplicate"] for a in acks) == 1
    assert duplicate_rows(server) == []
    for ws in [*rx, *tx]:
        await ws.close()


async def test_logout_through_one_server_process_closes_the_sessions_sockets_on_another(
    pg_url: str, make_server: ServerFactory
) -> None:
    env = {**FAST_ENV, "DATABASE_URL": pg_url, "JWT_SECRET": random_secret()}
    first, second = make_server(env), make_server(env)
    user = account(first)
    sockets = [await online(second, user.access_token) for _ in range(2)]
    async with httpx.AsyncClient(timeout=10) as client:
        logout = await client.post(f"{first.base_url}/api/auth/logout", headers=user.headers)
    assert logout.status_code == 200
    for ws in sockets:
        code, reason = await close_code(ws, timeout=10)
        assert code == 4401 and "session ended" in reason


@pytest.fixture
def own_server(make_server: ServerFactory) -> LocalServer:
    return make_server(FAST_ENV)


async def test_every_acked_message_survives_kill_9_and_none_is_stored_twice(own_server: LocalServer) -> None:
    server = own_server
    sender, recipient = account(server), account(server)
    acked: dict[str, int] = {}
    sent: list[str] = []
    stop_after = 1500
    reached = asyncio.Event()

    async def storm(ws: ClientConnection) -> None:
        in_flight = 0
        try:
            while True:  # until the kill
                while in_flight < 32:
                    mid = str(uuid.uuid4())
                    sent.append(mid)
                    await ws.send(send_frame(recipient.username, f"storm {mid}", mid))
                    in_flight += 1
                frame = json.loads(await ws.recv())
                if frame["type"] == "ack":
                    acked[frame["message_id"]] = frame["seq"]
                    in_flight -= 1
                    if len(acked) >= stop_after:
                        reached.set()
        except Exception:  # the kill
            return

    sockets = [await open_ws(server, sender.access_token) for _ in range(4)]
    storms = [asyncio.ensure_future(storm(ws)) for ws in sockets]
    await asyncio.wait_for(reached.wait(), 60)
    server.kill()  # SIGKILL mid-storm: sends are still in flight
    await asyncio.gather(*storms)
    assert len(sent) > len(acked)
    server.start()
    stored = stored_seqs(server)
    missing = [mid for mid in acked if stored.get(mid) != acked[mid]]
    assert not missing, f"{len(missing)} acked messages lost or changed seq"
    assert duplicate_rows(server) == []
    # Resending everything (acked or not) after the restart stores nothing twice.
    ws = await open_ws(server, sender.access_token)
    resend = sent[:50] + sent[-50:]
    for mid in resend:
        ack = await send_and_ack(ws, recipient.username, f"storm {mid}", mid)
        assert ack["type"] == "ack"
        if mid in acked:
            assert ack["duplicate"] is True and ack["seq"] == acked[mid]
    assert duplicate_rows(server) == []
    await ws.close()
