"""``/ws`` against a real server with real ``websockets`` clients (issue 4), on the selected backend."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import jwt
import pytest

from contracts.client import Account
from contracts.server import LocalServer
from contracts.wire import jwt_encode, jwt_parts
from tests.conftest import ServerFactory, server_factory
from tests.support.realtime import (
    FAST_ENV,
    account,
    close_code,
    count_rows,
    duplicate_rows,
    frames_within,
    next_frame,
    online,
    open_ws,
    send_and_ack,
    send_frame,
)

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with server_factory(tmp_path_factory.mktemp("ws")) as make:
        yield make(FAST_ENV)


@pytest.fixture(scope="module")
def alice(ws_server: LocalServer) -> Account:
    return account(ws_server)


@pytest.fixture(scope="module")
def bob(ws_server: LocalServer) -> Account:
    return account(ws_server)


def metric(server: LocalServer, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


# -- authentication: accept, then 4401 ----------------------------------------------------------


def _signed(server: LocalServer, token: str, secret: str | None = None, **changes: object) -> str:
    header, claims, _ = jwt_parts(token)
    claims.update(changes)
    return jwt.encode(
        claims, secret or server.env["JWT_SECRET"], algorithm="HS256", headers={"kid": header["kid"]}
    )


def bad_tokens(server: LocalServer, who: Account) -> dict[str, str]:
    good = who.access_token
    _header, claims, _ = jwt_parts(good)
    now = int(time.time())
    return {
        "garbage": "not-a-token",
        "malformed": "a.b.c",
        "forged": _signed(server, good, secret="x" * 48),
        "alg_none": jwt_encode({"alg": "none", "typ": "JWT"}, claims, ""),
        "expired": _signed(server, good, iat=now - 7200, exp=now - 3600),
        "wrong_issuer": _signed(server, good, iss="someone-else"),
        "refresh_token": who.refresh_token,
        "refresh_typ": _signed(server, good, typ="refresh"),
    }


CASES = [
    "garbage",
    "malformed",
    "forged",
    "alg_none",
    "expired",
    "wrong_issuer",
    "refresh_token",
    "refresh_typ",
]


@pytest.mark.parametrize("case", CASES)
async def test_bad_token_on_upgrade_is_accepted_then_closed_4401(
    ws_server: LocalServer, alice: Account, case: str
) -> None:
    before = metric(ws_server, "nexo_ws_unauthorized_closes_total")
    ws = await open_ws(ws_server, bad_tokens(ws_server, alice)[case])
    code, reason = await close_code(ws)
    assert code == 4401 and reason
    assert metric(ws_server, "nexo_ws_unauthorized_closes_total") >= before + 1


@pytest.mark.parametrize("case", ["forged", "expired", "refresh_token"])
async def test_bad_token_in_auth_frame_closes_4401(ws_server: LocalServer, alice: Account, case: str) -> None:
    ws = await open_ws(ws_server)
    await ws.send(json.dumps({"type": "auth", "token": bad_tokens(ws_server, alice)[case]}))
    code, reason = await close_code(ws)
    assert code == 4401 and reason


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    "])
async def test_malformed_authorization_header_closes_4401(ws_server: LocalServer, header: str) -> None:
    from websockets.asyncio.client import connect

    ws = await connect(ws_server.ws_url, additional_headers={"Authorization": header}, ping_interval=None)
    assert (await close_code(ws))[0] == 4401


async def test_no_token_closes_4401_after_the_auth_window(ws_server: LocalServer) -> None:
    ws = await open_ws(ws_server)
    started = time.monotonic()
    code, reason = await close_code(ws, timeout=15)
    assert code == 4401 and "5 s" in reason
    assert 4.0 < time.monotonic() - started < 10


async def test_first_frame_must_be_auth(ws_server: LocalServer, bob: Account) -> None:
    ws = await open_ws(ws_server)
    await ws.send(send_frame(bob.username))
    assert (await close_code(ws))[0] == 4401


async def test_auth_frame_then_send(ws_server: LocalServer, alice: Account, bob: Account) -> None:
    ws = await open_ws(ws_server)
    await ws.send(json.dumps({"type": "auth", "token": alice.access_token}))
    ack = await send_and_ack(ws, bob.username, "browser")
    assert ack["type"] == "ack" and ack["duplicate"] is False
    await ws.close()


async def test_a_message_sent_between_handshake_and_auth_is_still_pushed(ws_server: LocalServer) -> None:
    sender, recipient = account(ws_server), account(ws_server)
    rx = await open_ws(ws_server)  # open, not yet authenticated (the browser path)
    tx = await open_ws(ws_server, sender.access_token)
    ack = await send_and_ack(tx, recipient.username, "sent while the recipient was connecting")
    await rx.send(json.dumps({"type": "auth", "token": recipient.access_token}))
    pushed = await next_frame(rx, "message")
    assert (pushed["message_id"], pushed["seq"]) == (ack["message_id"], ack["seq"])
    # Once only: the catch-up and a live push never both deliver it.
    assert [f for f in await frames_within(rx, 0.5) if f.get("type") == "message"] == []
    await tx.close()
    await rx.close()


# -- ack, push, sync, delivered -------------------------------------------------------------------


async def test_ack_per_message_and_push_to_every_connection(ws_server: LocalServer) -> None:
    sender, recipient = account(ws_server), account(ws_server)
    tx = await open_ws(ws_server, sender.access_token)
    rx1 = await online(ws_server, recipient.access_token)
    rx2 = await online(ws_server, recipient.access_token)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for i, mid in enumerate(ids):
        await tx.send(send_frame(recipient.username.upper(), f"m{i}", mid))
    acks = [await next_frame(tx, "ack") for _ in ids]
    assert sorted(a["message_id"] for a in acks) == sorted(ids)
    by_id = {a["message_id"]: a for a in acks}
    seqs = [by_id[mid]["seq"] for mid in ids]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(a["duplicate"] is False and isinstance(a["server_ts"], int) for a in acks)
    for rx in (rx1, rx2):
        got = [f for f in await frames_within(rx, 1.5) if f["type"] == "message"]
        assert [f["message_id"] for f in got] == ids  # each once, in seq order
        assert got[0]["from"] == sender.username and got[0]["to"] == recipient.username
        assert got[0]["body"] == "m0" and got[0]["seq"] == by_id[ids[0]]["seq"]
    for ws in (tx, rx1, rx2):
        await ws.close()


async def test_offline_recipient_gets_messages_on_sync(ws_server: LocalServer) -> None:
    sender, recipient = account(ws_server), account(ws_server)
    tx = await open_ws(ws_server, sender.access_token)
    acks = [await send_and_ack(tx, recipient.username, f"offline {i}") for i in range(3)]
    rx = await open_ws(ws_server, recipient.access_token)
    await rx.send(json.dumps({"type": "sync", "since": 0}))
    replay = [await next_frame(rx) for _ in range(4)]
    assert [f["type"] for f in replay] == ["message", "message", "message", "synced"]
    assert [f["seq"] for f in replay[:3]] == [a["seq"] for a in acks]
    assert replay[3]["upto"] == acks[-1]["seq"]
    await rx.send(json.dumps({"type": "sync", "since": acks[1]["seq"]}))
    assert (await next_frame(rx))["message_id"] == acks[2]["message_id"]
    assert (await next_frame(rx)) == {"type": "synced", "upto": acks[2]["seq"]}
    await rx.send(json.dumps({"type": "delivered", "message_id": acks[0]["message_id"]}))
    await rx.send(json.dumps({"type": "delivered", "message_id": str(uuid.uuid4())}))
    error = await next_frame(rx, "error")
    assert error["code"] == "not_found"
    headers = {"Authorization": f"Bearer {recipient.access_token}"}
    got = await asyncio.to_thread(
        httpx.get, f"{ws_server.base_url}/api/messages/{acks[0]['message_id']}", headers=headers, timeout=10
    )
    assert isinstance(got.json()["delivered_at"], int)
    # the sender cannot mark its own message delivered
    await tx.send(json.dumps({"type": "delivered", "message_id": acks[1]["message_id"]}))
    assert (await next_frame(tx, "error"))["code"] == "not_found"
    await tx.close()
    await rx.close()


# -- exactly once ----------------------------------------------------------------------------------


async def test_duplicates_on_every_path_are_stored_and_pushed_once(ws_server: LocalServer) -> None:
    sender, recipient = account(ws_server), account(ws_server)
    rx = await online(ws_server, recipient.access_token)
    tx = await open_ws(ws_server, sender.access_token)
    mid = str(uuid.uuid4())
    first = await send_and_ack(tx, recipient.username, "once", mid)
    assert first["duplicate"] is False
    again = await send_and_ack(tx, recipient.username, "once", mid)  # same connection
    await tx.close()
    tx2 = await open_ws(ws_server, sender.access_token)  # after reconnect
    third = await send_and_ack(tx2, recipient.username, "once", mid)
    posted = await asyncio.to_thread(  # through HTTP
        httpx.post,
        f"{ws_server.base_url}/api/messages",
        json={"message_id": mid, "to": recipient.username, "body": "once"},
        headers={"Authorization": f"Bearer {sender.access_token}"},
        timeout=10,
    )
    assert posted.status_code == 200
    for dup in (again, third, posted.json()):
        assert dup["duplicate"] is True
        assert (dup["seq"], dup["server_ts"]) == (first["seq"], first["server_ts"])
    pushed = [f for f in await frames_within(rx, 1.0) if f.get("type") == "message"]
    assert [f["message_id"] for f in pushed] == [mid]
    assert count_rows(ws_server, mid) == 1
    await tx2.close()
    await rx.close()


@pytest.mark.parametrize("fresh", [True, False])
async def test_concurrent_resends_on_n_connections_store_one_row(ws_server: LocalServer, fresh: bool) -> None:
    n = 8
    sender, recipient = account(ws_server), account(ws_server)
    rx = await online(ws_server, recipient.access_token)
    sockets = [await open_ws(ws_server, sender.access_token) for _ in range(n)]
    mid = str(uuid.uuid4())
    if not fresh:
        await send_and_ack(sockets[0], recipient.username, "storm", mid)
    frame = send_frame(recipient.username, "storm", mid)
    await asyncio.gather(*(ws.send(frame) for ws in sockets))
    acks = await asyncio.gather(*(next_frame(ws, "ack") for ws in sockets))
    assert len({(a["seq"], a["server_ts"], a["message_id"]) for a in acks}) == 1
    assert sum(not a["duplicate"] for a in acks) == (1 if fresh else 0)
    assert count_rows(ws_server, mid) == 1
    pushed = [f for f in await frames_within(rx, 1.0) if f.get("type") == "message"]
    assert [f["message_id"] for f in pushed] == [mid]
    for ws in [*sockets, rx]:
        await ws.close()


async def test_same_id_other_body_or_sender_is_a_conflict(ws_server: LocalServer) -> None:
    sender, other, recipient = account(ws_server), account(ws_server), account(ws_server)
    tx = await open_ws(ws_server, sender.access_token)
    mid = str(uuid.uuid4())
    await send_and_ack(tx, recipient.username, "secret original", mid)
    conflict = await send_and_ack(tx, recipient.username, "changed", mid)
    assert conflict["type"] == "error" and conflict["code"] == "message_id_conflict"
    ox = await open_ws(ws_server, other.access_token)
    stolen = await send_and_ack(ox, recipient.username, "secret original", mid)
    assert stolen["type"] == "error" and stolen["code"] == "message_id_conflict"
    assert "secret" not in json.dumps(stolen) and "seq" not in stolen
    assert count_rows(ws_server, mid) == 1
    assert (await send_and_ack(tx, recipient.username))["type"] == "ack"  # still usable
    await tx.close()
    await ox.close()


# -- bad input keeps the connection ------------------------------------------------------------


async def test_bad_frames_get_error_codes_and_the_connection_stays_usable(
    ws_server: LocalServer, alice: Account, bob: Account
) -> None:
    ws = await open_ws(ws_server, alice.access_token)
    mid = str(uuid.uuid4())
    cases = [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"message_id": mid}), "invalid_field"),
        (json.dumps({"type": "send", "to": bob.username, "body": "x"}), "invalid_field"),
        (
            json.dumps({"type": "send", "message_id": "1234", "to": bob.username, "body": "x"}),
            "invalid_message_id",
        ),
        (
            json.dumps({"type": "send", "message_id": 5, "to": bob.username, "body": "x"}),
            "invalid_message_id",
        ),
        (json.dumps({"type": "send", "message_id": mid, "to": bob.username, "body": 5}), "invalid_field"),
        (json.dumps({"type": "send", "message_id": mid, "to": ["x"], "body": "x"}), "invalid_field"),
        (
            json.dumps({"type": "send", "message_id": mid, "to": "nobody_here_xyz", "body": "x"}),
            "unknown_recipient",
        ),
        (
            json.dumps(
                {"type": "send", "message_id": mid, "to": bob.username, "body": "é" * 40000},
                ensure_ascii=False,
            ),
            "body_too_large",
        ),
        (json.dumps({"type": "sync", "since": "zero"}), "invalid_field"),
        (json.dumps({"type": "delivered", "message_id": "nope"}), "invalid_message_id"),
    ]
    for text, code in cases:
        await ws.send(text)
        error = await next_frame(ws)
        assert error["type"] == "error" and error["code"] == code, (text[:60], error)
        assert error["message"]
    await ws.send(b"\x00binary")
    assert (await next_frame(ws))["code"] == "binary_not_supported"
    assert count_rows(ws_server, mid) == 0  # nothing of the bad sends was stored
    assert (await send_and_ack(ws, bob.username, "after all that"))["type"] == "ack"
    await ws.close()


async def test_frame_over_the_size_limit_closes_1009(ws_server: LocalServer, alice: Account) -> None:
    ws = await open_ws(ws_server, alice.access_token, max_size=None)
    await ws.send("x" * (200 * 1024))
    assert (await close_code(ws))[0] == 1009


# -- metrics ----------------------------------------------------------------------------------


async def test_metrics_count_connections_acks_and_duplicates(ws_server: LocalServer) -> None:
    sender, recipient = account(ws_server), account(ws_server)
    acked, dups = (
        metric(ws_server, "nexo_messages_acked_total"),
        metric(ws_server, "nexo_messages_duplicates_suppressed_total"),
    )
    ws = await open_ws(ws_server, sender.access_token)
    assert metric(ws_server, "nexo_ws_open_connections") >= 1
    mid = str(uuid.uuid4())
    await send_and_ack(ws, recipient.username, "m", mid)
    await send_and_ack(ws, recipient.username, "m", mid)
    assert metric(ws_server, "nexo_messages_acked_total") == acked + 2
    assert metric(ws_server, "nexo_messages_duplicates_suppressed_total") == dups + 1
    await ws.close()


def test_runbook_duplicate_query_finds_nothing(ws_server: LocalServer) -> None:
    # Runs last in this module: after every duplicate path above.
    assert duplicate_rows(ws_server) == []


# -- servers of their own ----------------------------------------------------------------------


@pytest.fixture
def own_server(make_server: ServerFactory, request: pytest.FixtureRequest) -> LocalServer:
    """A server of the test's own, with ``@pytest.mark.parametrize("own_server", [env], indirect=True)``."""
    return make_server({**FAST_ENV, **getattr(request, "param", {})})


@pytest.mark.parametrize("own_server", [{"NEXO_WS_RATE_LIMIT": "5/minute"}], indirect=True)
async def test_send_budget_refuses_with_retry_after_and_stores_nothing(own_server: LocalServer) -> None:
    server = own_server
    sender, recipient = account(server), account(server)
    ws = await open_ws(server, sender.access_token)
    ids = [str(uuid.uuid4()) for _ in range(7)]
    for mid in ids:
        await ws.send(send_frame(recipient.username, "x", mid))
    answers = {}
    while len(answers) < len(ids):
        frame = await next_frame(ws)
        answers[frame["message_id"]] = frame
    kinds = [answers[mid]["type"] for mid in ids]
    assert kinds == ["ack"] * 5 + ["error"] * 2
    refused = answers[ids[5]]
    assert refused["code"] == "rate_limited" and refused["retry_after"] > 0
    assert count_rows(server, ids[5]) == 0 and count_rows(server, ids[6]) == 0
    await ws.close()


@pytest.mark.parametrize("own_server", [{"NEXO_WS_RATE_LIMIT": "3/minute"}], indirect=True)
async def test_send_budget_holds_one_frame_at_a_time(own_server: LocalServer) -> None:
    """Frames sent one by one to a known recipient take the inbox's fast path (no reader
    wake-up): the budget, the acks and the refusal are the same there."""
    server = own_server
    sender, recipient = account(server), account(server)
    ws = await open_ws(server, sender.access_token)
    answers = []
    for _ in range(4):
        mid = str(uuid.uuid4())
        await ws.send(send_frame(recipient.username, "one at a time", mid))
        answers.append((mid, await next_frame(ws)))
    assert [frame["type"] for _, frame in answers] == ["ack", "ack", "ack", "error"]
    refused_id, refused = answers[3]
    assert refused["code"] == "rate_limited" and refused["message_id"] == refused_id
    assert 0 < refused["retry_after"] <= 60
    assert count_rows(server, refused_id) == 0
    assert [count_rows(server, mid) for mid, _ in answers[:3]] == [1, 1, 1]
    await ws.close()


@pytest.mark.parametrize("own_server", [{"NEXO_ACCESS_TOKEN_TTL": "3"}], indirect=True)
async def test_expired_token_closes_4401_unless_renewed(own_server: LocalServer) -> None:
    server = own_server
    user, other = account(server), account(server)
    plain = await open_ws(server, user.access_token)
    renewed = await open_ws(server, user.access_token)
    started = time.monotonic()
    await asyncio.sleep(1.2)
    fresh = user.relogin()["access_token"]  # expires about 1.2 s after the first
    await renewed.send(json.dumps({"type": "auth", "token": fresh}))
    code, reason = await close_code(plain, timeout=10)
    assert code == 4401 and "expired" in reason
    assert time.monotonic() - started < 6
    assert (await send_and_ack(renewed, other.username))["type"] == "ack"  # renewal kept it open
    assert (await close_code(renewed, timeout=10))[0] == 4401
    # renewal with a token of somebody else closes at once
    third = await open_ws(server, other.relogin()["access_token"])
    await third.send(json.dumps({"type": "auth", "token": user.relogin()["access_token"]}))
    assert (await close_code(third))[0] == 4401


async def test_logout_closes_that_sessions_sockets_4401_and_no_other(ws_server: LocalServer) -> None:
    user, other = account(ws_server), account(ws_server)
    first = user.access_token
    second = user.relogin()["access_token"]  # another session of the same user
    first_ws, second_ws = await online(ws_server, first), await online(ws_server, second)
    before = metric(ws_server, "nexo_ws_unauthorized_closes_total")
    async with httpx.AsyncClient(timeout=10) as client:
        logout = await client.post(
            f"{ws_server.base_url}/api/auth/logout", headers={"Authorization": f"Bearer {first}"}
        )
    assert logout.status_code == 200
    code, reason = await close_code(first_ws, timeout=10)
    assert code == 4401 and "session ended" in reason
    assert metric(ws_server, "nexo_ws_unauthorized_closes_total") >= before + 1
    assert (await send_and_ack(second_ws, other.username))["type"] == "ack"  # its session lives on
    await second_ws.close()


async def test_deleting_the_account_closes_all_its_sockets_4401(ws_server: LocalServer) -> None:
    user, other = account(ws_server), account(ws_server)
    sockets = [await online(ws_server, user.access_token)]
    sockets.append(await online(ws_server, user.relogin()["access_token"]))
    assert user.delete() == 204
    for ws in sockets:
        code, reason = await close_code(ws, timeout=10)
        assert code == 4401 and "session ended" in reason
    bystander = await online(ws_server, other.access_token)
    await bystander.send(send_frame(other.username))
    assert (await next_frame(bystander, "ack"))["type"] == "ack"
    await bystander.close()


async def test_unexpected_failure_closes_1011_and_logs_the_request_id(own_server: LocalServer) -> None:
    server = own_server
    user = account(server)
    ws = await open_ws(server, user.access_token)
    await _rename_messages_table(server, "messages", "messages_away")
    try:
        await ws.send(json.dumps({"type": "sync", "since": 0}))
        code, reason = await close_code(ws)
    finally:
        await _rename_messages_table(server, "messages_away", "messages")
    assert code == 1011
    request_id = reason.rsplit(" ", 1)[-1]
    assert re.fullmatch(r"[0-9a-f]{20,}", request_id), reason  # NexoRequest.request_id
    assert f"request {request_id}" in server.log_text()
    ws = await open_ws(server, user.access_token)  # the server is fine
    assert (await send_and_ack(ws, user.username))["type"] == "ack"
    await ws.close()


async def _rename_messages_table(server: LocalServer, old: str, new: str) -> None:
    url = server.env.get("DATABASE_URL")
    if url:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
        finally:
            await conn.close()
        return
    import sqlite3

    with sqlite3.connect(server.data_dir / "nexo.db") as db:
        db.execute(f"ALTER TABLE {old} RENAME TO {new}")


async def test_graceful_stop_acks_in_flight_then_closes_1001(own_server: LocalServer) -> None:
    server = own_server
    sender, recipient = account(server), account(server)
    ws = await open_ws(server, sender.access_token)
    ids = [str(uuid.uuid4()) for _ in range(200)]
    for mid in ids:
        await ws.send(send_frame(recipient.username, "bye", mid))
    await asyncio.sleep(0.05)
    stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
    acks: set[str] = set()
    code = None
    while True:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
        except Exception as exc:  # the close
            rcvd = getattr(exc, "rcvd", None)
            code = rcvd.code if rcvd else None
            break
        if frame["type"] == "ack":
            acks.add(frame["message_id"])
    await stopping
    assert code == 1001
    assert acks  # whatever was received was acked before the close
    server.start()
    for mid in acks:
        assert count_rows(server, mid) == 1
