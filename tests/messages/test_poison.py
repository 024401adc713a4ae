"""Issue 14, finding 1: one bad message (or device key) must not fail anyone else's.

A poison entry is put in the *same* group commit as 100 valid ones for sure:
the test holds the database's write lock (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL the writer's advisory lock) while one entry blocks the writer in
its commit and everything else queues behind it; releasing the lock lets the
queued entries commit as one batch.

Two kinds of poison:
- what the client can send (a lone surrogate, U+0000): refused by validation
  before batching, with a clear error;
- a row only the database refuses: the test adds a trigger (SQLite) or a CHECK
  constraint (PostgreSQL) behind the server's back. No valid client input
  reaches the database and fails there any more, so this is how the isolation
  itself (bisecting a refused batch) is proven, with no test-only code in the
  server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from contracts.client import Account
from contracts.server import LocalServer
from nexo.messages.repository import SEQ_LOCK_KEY
from nexo.transparency.repository import SEQUENCER_LOCK_ID
from tests.conftest import db_execute
from tests.load.leanws import LeanClient
from tests.support.realtime import FAST_ENV, account, next_frame, online, send_frame

pytestmark = pytest.mark.server

VALID = 100
#: A body only the database refuses (trigger or CHECK constraint added by the test).
REFUSED_BODY = "refused by the database"
REFUSED_DEVICE = "refused-by-the-database"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import server_factory

    with server_factory(tmp_path_factory.mktemp("poison")) as make:
        server = make(FAST_ENV)
        refuse_in_database(server, "messages", "body", REFUSED_BODY)
        refuse_in_database(server, "devices", "name", REFUSED_DEVICE)
        yield server


@contextlib.asynccontextmanager
async def write_lock(server: LocalServer, pg_key: int) -> AsyncIterator[None]:
    """Hold the lock the server's writer needs, so what it is sent meanwhile queues up."""
    url = server.env.get("DATABASE_URL")
    if url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", pg_key)
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", pg_key)
            await conn.close()
    else:
        lite = sqlite3.connect(server.data_dir / "nexo.db", timeout=10, isolation_level=None)
        try:
            lite.execute("BEGIN IMMEDIATE")
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()


def refuse_in_database(server: LocalServer, table: str, column: str, value: str) -> None:
    """A rule only the database knows: inserting ``value`` into ``table.column`` fails."""
    name = f"refuse_{table}_{uuid.uuid4().hex[:8]}"
    if server.env.get("DATABASE_URL"):
        db_execute(server, f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({column} <> '{value}')")
    else:
        db_execute(
            server,
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN NEW.{column} = '{value}' "
            f"BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END",
        )


def raw_send(message_id: str, to: str, body_json: str) -> str:
    """A ``send`` frame whose body is given as raw JSON text (to spell ``\\ud800``)."""
    return f'{{"type":"send","message_id":"{message_id}","to":"{to}","body":{body_json}}}'


async def stored_for(server: LocalServer, who: Account) -> dict[str, str]:
    """message_id → body of everything ``who`` can read."""
    out: dict[str, str] = {}
    since = 0
    async with httpx.AsyncClient(base_url=server.base_url, headers=who.headers) as client:
        while True:
            page = (await client.get("/api/messages", params={"since": since, "limit": 1000})).json()
            for row in page["messages"]:
                out[row["message_id"]] = row["body"]
            if len(page["messages"]) < 1000:
                return out
            since = page["messages"][-1]["seq"]


async def burst_over_ws(
    server: LocalServer, sender: Account, frames: list[str], pg_key: int = SEQ_LOCK_KEY
) -> dict[str, dict[str, Any]]:
    """Prime the writer, then send ``frames`` in one write while the writer is blocked; the
    answer to each message_id."""
    answers: dict[str, dict[str, Any]] = {}
    done = asyncio.Event()
    expected = len(frames) + 1

    def on_text(text: str) -> None:
        frame = json.loads(text)
        if "message_id" in frame:
            answers[frame["message_id"]] = frame
        if len(answers) >= expected:
            done.set()

    client = await LeanClient.open(server.ws_url, {"Authorization": f"Bearer {sender.access_token}"}, on_text)
    try:
        blocker = str(uuid.uuid4())
        async with write_lock(server, pg_key):
            client.send([send_frame(frames_to(frames), "blocks the writer", blocker)])
            await asyncio.sleep(0.5)  # the writer is now inside its commit, waiting for the lock
            client.send(frames)  # one write: queued together behind it
            await asyncio.sleep(0.5)
        await asyncio.wait_for(done.wait(), 30)
        assert answers[blocker]["type"] == "ack"
    finally:
        client.close()
    return answers


def frames_to(frames: list[str]) -> str:
    return str(json.loads(frames[0])["to"])


def valid_frames(to: str, count: int) -> tuple[list[str], list[str]]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    return [send_frame(to, f"valid {i}", mid) for i, mid in enumerate(ids)], ids


async def prime(server: LocalServer, sender: Account, recipient: Account) -> None:
    """One acked send, so the recipient's id is cached and later sends take the no-I/O path."""
    ws = await online(server, sender.access_token)
    try:
        await ws.send(send_frame(recipient.username, "prime"))
        assert (await next_frame(ws, "ack"))["type"] == "ack"
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ("poison", "code"),
    [('"\\ud800"', "invalid_json"), ('"a\\u0000b"', "invalid_body"), ('"x\\udfff\\ud800y"', "invalid_json")],
    ids=["lone-surrogate", "nul", "reversed-pair"],
)
async def test_poison_body_among_100_ws_sends_fails_alone(srv: LocalServer, poison: str, code: str) -> None:
    log_start = len(srv.log_text())
    alice, bob = account(srv), account(srv)
    await prime(srv, alice, bob)
    frames, ids = valid_frames(bob.username, VALID)
    bad = str(uuid.uuid4())
    frames.insert(VALID // 2, raw_send(bad, bob.username, poison))
    answers = await burst_over_ws(srv, alice, frames)
    assert answers[bad]["type"] == "error" and answers[bad]["code"] == code, answers[bad]
    assert [answers[mid]["type"] for mid in ids] == ["ack"] * VALID
    stored = await stored_for(srv, bob)
    assert all(stored[mid] == f"valid {i}" for i, mid in enumerate(ids))
    assert bad not in stored
    assert "Traceback" not in srv.log_text()[log_start:]


async def test_poison_body_among_100_http_sends_fails_alone(srv: LocalServer) -> None:
    log_start = len(srv.log_text())
    alice, bob = account(srv), account(srv)
    ids = [str(uuid.uuid4()) for _ in range(VALID)]
    poisons = {str(uuid.uuid4()): '"\\ud800"', str(uuid.uuid4()): '"nul \\u0000"'}
    async with httpx.AsyncClient(base_url=srv.base_url, headers=alice.headers, timeout=30) as client:

        async def post(mid: str, body_json: str) -> httpx.Response:
            raw = f'{{"message_id":"{mid}","to":"{bob.username}","body":{body_json}}}'
            headers = {"Content-Type": "application/json"}
            return await client.post("/api/messages", content=raw, headers=headers)

        async with write_lock(srv, SEQ_LOCK_KEY):
            blocker = asyncio.create_task(post(str(uuid.uuid4()), '"blocks the writer"'))
            await asyncio.sleep(0.5)
            calls = [post(mid, json.dumps(f"valid {i}")) for i, mid in enumerate(ids)]
            calls[VALID // 2 : VALID // 2] = [post(mid, body) for mid, body in poisons.items()]
            tasks = [asyncio.create_task(call) for call in calls]
            await asyncio.sleep(1.0)
        responses = await asyncio.gather(*tasks)
        assert (await blocker).status_code == 201
    by_status = sorted(r.status_code for r in responses)
    assert by_status == [201] * VALID + [400, 422], by_status
    codes = sorted(r.json()["error"]["code"] for r in responses if r.status_code >= 400)
    assert codes == ["invalid_body", "invalid_json"]
    stored = await stored_for(srv, bob)
    assert all(stored[mid] == f"valid {i}" for i, mid in enumerate(ids))
    assert not set(poisons) & set(stored)
    assert "Traceback" not in srv.log_text()[log_start:]


async def test_row_the_database_refuses_fails_alone_in_its_group_commit(srv: LocalServer) -> None:
    server = srv
    log_start = len(server.log_text())
    alice, bob = account(server), account(server)
    await prime(server, alice, bob)
    frames, ids = valid_frames(bob.username, VALID)
    bad = str(uuid.uuid4())
    frames.insert(VALID // 3, send_frame(bob.username, REFUSED_BODY, bad))
    answers = await burst_over_ws(server, alice, frames)
    assert answers[bad]["type"] == "error" and answers[bad]["code"] == "service_unavailable"
    assert [answers[mid]["type"] for mid in ids] == ["ack"] * VALID
    seqs = [answers[mid]["seq"] for mid in ids]
    assert seqs == sorted(seqs), "seq follows the order the sends were queued in"
    stored = await stored_for(server, bob)
    assert all(stored[mid] == f"valid {i}" for i, mid in enumerate(ids))
    assert bad not in stored
    # The refusal happened inside a batch (not to a lone row) and was isolated by bisection.
    refused = [int(n) for n in re.findall(r"message batch of (\d+) refused", server.log_text()[log_start:])]
    assert refused and max(refused) > VALID // 2, refused


def _device(name: str) -> dict[str, str]:
    return {"name": name, "public_key": base64.b64encode(os.urandom(32)).decode(), "key_type": "ed25519"}


async def test_device_the_database_refuses_fails_alone_in_its_sth_batch(srv: LocalServer) -> None:
    server = srv
    log_start = len(server.log_text())
    owners = [account(server) for _ in range(4)]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:

        async def register(owner: Account, name: str) -> httpx.Response:
            return await client.post("/api/devices", json=_device(name), headers=owner.headers)

        async with write_lock(server, SEQUENCER_LOCK_ID):
            blocker = asyncio.create_task(register(owners[0], "blocks-the-sequencer"))
            await asyncio.sleep(0.5)
            calls = [register(owners[i % 4], f"phone-{i}") for i in range(20)]
            calls.insert(10, register(owners[1], REFUSED_DEVICE))
            tasks = [asyncio.create_task(call) for call in calls]
            await asyncio.sleep(1.0)
        responses = await asyncio.gather(*tasks)
        assert (await blocker).status_code == 201
        refused = responses.pop(10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
        assert [r.status_code for r in responses] == [201] * 20, [r.text for r in responses]
        indexes = [r.json()["log"]["leaf_index"] for r in responses]
        assert len(set(indexes)) == 20
        names = set()
        for owner in owners:
            listed = (await client.get("/api/devices", headers=owner.headers)).json()["devices"]
            names |= {device["name"] for device in listed}
        assert names == {"blocks-the-sequencer"} | {f"phone-{i}" for i in range(20)}
    assert "sequencing its halves apart" in server.log_text()[log_start:]
    # The log stays one valid chain: every STH signed, linked and consistent.
    audit = await asyncio.to_thread(_audit, server)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def _audit(server: LocalServer) -> Any:
    from contracts.server import run_nexo

    return run_nexo(["audit", "--url", server.base_url], env=server.env, cwd=server.data_dir, timeout=120)
