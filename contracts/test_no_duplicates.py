"""Runbook "WebSocket Duplicate Messages": a message is stored once, however often it is sent.

docs/messaging.md "Guarantees": every retry of a ``message_id`` (same connection, after reconnect,
concurrently on several connections, over HTTP) gets an ack with the original
``seq`` and ``"duplicate": true``; the API shows one stored message; the
recipient receives it once; the same id with another body or from another
sender is refused with ``message_id_conflict``. Against a server this suite
started on SQLite, the runbook's own ``sqlite3`` query must return no rows.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import time
import uuid
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from contracts.conftest import Accounts, Figure, Target
from contracts.wire import frame, frames_for, is_ack, open_ws, send_frame

RUNBOOK_QUERY = "SELECT message_id, COUNT(*) FROM messages GROUP BY message_id HAVING COUNT(*) > 1;"
RESENDS = 3
CONNECTIONS = 4
#: How long the recipient keeps listening for a second copy after the first one arrived.
GRACE = 1.0


@pytest.fixture(scope="module")
def pair(accounts: Accounts) -> tuple[Any, Any]:
    return accounts.create(), accounts.create()


def runbook_duplicate_rows(target: Target) -> list[str] | None:
    """The runbook's query on the local SQLite file; None when the target is not local SQLite."""
    path = target.sqlite_path
    if path is None:
        return None
    if shutil.which("sqlite3"):
        result = subprocess.run(
            ["sqlite3", str(path), RUNBOOK_QUERY], capture_output=True, text=True, timeout=30, check=True
        )
        return [line for line in result.stdout.splitlines() if line.strip()]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [f"{row[0]}|{row[1]}" for row in db.execute(RUNBOOK_QUERY)]


def stored_copies(target: Target, account: Any, message_id: str) -> int:
    """How many messages with ``message_id`` the account sees through ``GET /api/messages``."""
    count, since = 0, 0
    with httpx.Client(timeout=10, headers=account.headers) as client:
        while True:
            response = client.get(target.url("/api/messages"), params={"since": since, "limit": 100})
            assert response.status_code == 200, f"GET /api/messages -> {response.status_code}"
            page = response.json()["messages"]
            count += sum(1 for m in page if m["message_id"] == message_id)
            if not page:
                return count
            since = max(m["seq"] for m in page)


async def copies_received(ws: ClientConnection, message_id: str, timeout: float) -> int:
    """Pushed ``message`` frames for ``message_id``: wait for the first, then listen ``GRACE`` more."""
    await frame(ws, timeout, lambda f: f.get("type") == "message" and f.get("message_id") == message_id)
    more = await frames_for(ws, GRACE)
    return 1 + sum(1 for f in more if f.get("type") == "message" and f.get("message_id") == message_id)


async def live_inbox(target: Target, account: Any) -> ClientConnection:
    """A recipient connection the server has certainly registered: it answered a ``sync``.

    The push promise is about a connected recipient; a round trip on the socket
    is how a client knows the server sees it as connected, not just upgraded.
    """
    ws = await open_ws(target.ws_url, account.access_token, target.ws_timeout)
    await ws.send(json.dumps({"type": "sync", "since": 0}))
    await frame(ws, target.ws_timeout, lambda f: f.get("type") == "synced")
    return ws


def assert_stored_once(target: Target, pair: tuple[Any, Any], message_id: str) -> None:
    sender, recipient = pair
    assert stored_copies(target, sender, message_id) == 1, "the sender's API view must hold the message once"
    assert stored_copies(target, recipient, message_id) == 1, "the recipient's API view must hold it once"
    rows = runbook_duplicate_rows(target)
    assert rows in (None, []), f"the runbook's duplicate query returned rows: {rows}"


def assert_same_original(acks: list[dict[str, Any]]) -> None:
    seqs = {a["seq"] for a in acks}
    assert len(seqs) == 1, f"retries were acked with different seqs: {sorted(seqs)}"
    stamps = {a.get("server_ts") for a in acks}
    assert len(stamps) == 1, f"retries were acked with different server_ts: {stamps}"
    firsts = [a for a in acks if a["duplicate"] is False]
    assert len(firsts) == 1, f"{len(firsts)} of {len(acks)} acks say duplicate=false; exactly one must"


def test_resend_on_one_connection(target: Target, pair: tuple[Any, Any], figure: Figure) -> None:
    sender, recipient = pair
    outgoing = send_frame(recipient.username, "contract: resend same connection")

    async def run() -> tuple[list[dict[str, Any]], int]:
        inbox = await live_inbox(target, recipient)
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        try:
            acks = []
            for _ in range(RESENDS):
                await ws.send(json.dumps(outgoing))
                acks.append(await frame(ws, target.ws_timeout, is_ack(outgoing["message_id"])))
            return acks, await copies_received(inbox, outgoing["message_id"], target.ws_timeout)
        finally:
            await ws.close()
            await inbox.close()

    acks, received = asyncio.run(run())
    rows = runbook_duplicate_rows(target)
    distinct = len({a["seq"] for a in acks})
    query = "" if rows is None else f"; runbook sqlite3 query: {len(rows)} rows"
    figure(f"{RESENDS} sends -> {distinct} distinct seq, recipient received it {received}x{query}")
    assert acks[0]["duplicate"] is False, "the first send is not a duplicate"
    assert_same_original(acks)
    assert received == 1, f"the connected recipient received the message {received} times"
    assert_stored_once(target, pair, outgoing["message_id"])


def test_resend_after_reconnect(target: Target, pair: tuple[Any, Any]) -> None:
    sender, recipient = pair
    outgoing = send_frame(recipient.username, "contract: resend after reconnect")

    async def send_once() -> dict[str, Any]:
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        try:
            await ws.send(json.dumps(outgoing))
            return await frame(ws, target.ws_timeout, is_ack(outgoing["message_id"]))
        finally:
            await ws.close()

    acks = [asyncio.run(send_once()) for _ in range(RESENDS)]
    assert acks[0]["duplicate"] is False
    assert_same_original(acks)
    assert_stored_once(target, pair, outgoing["message_id"])


def test_concurrent_resend_on_several_connections(target: Target, pair: tuple[Any, Any]) -> None:
    sender, recipient = pair
    outgoing = send_frame(recipient.username, "contract: concurrent resend")

    async def run() -> tuple[list[dict[str, Any]], int]:
        inbox = await live_inbox(target, recipient)
        sockets = await asyncio.gather(
            *(open_ws(target.ws_url, sender.access_token, target.ws_timeout) for _ in range(CONNECTIONS))
        )
        try:
            text = json.dumps(outgoing)
            await asyncio.gather(*(ws.send(text) for ws in sockets))
            acks = await asyncio.gather(
                *(frame(ws, target.ws_timeout, is_ack(outgoing["message_id"])) for ws in sockets)
            )
            return list(acks), await copies_received(inbox, outgoing["message_id"], target.ws_timeout)
        finally:
            await asyncio.gather(*(ws.close() for ws in [*sockets, inbox]))

    acks, received = asyncio.run(run())
    assert_same_original(acks)
    assert received == 1, f"the connected recipient received the message {received} times"
    assert_stored_once(target, pair, outgoing["message_id"])


def test_retry_over_http_and_websocket_keeps_the_original(target: Target, pair: tuple[Any, Any]) -> None:
    sender, recipient = pair
    body = {"message_id": str(uuid.uuid4()), "to": recipient.username, "body": "contract: http retry"}
    with httpx.Client(timeout=10, headers=sender.headers) as client:
        first = client.post(target.url("/api/messages"), json=body)
        again = client.post(target.url("/api/messages"), json=body)
    assert first.status_code == 201, f"first POST /api/messages -> {first.status_code} {first.text[:200]}"
    assert again.status_code == 200, f"retried POST /api/messages -> {again.status_code}, expected 200"
    assert again.json()["duplicate"] is True and again.json()["seq"] == first.json()["seq"], again.json()

    async def resend() -> dict[str, Any]:
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        try:
            await ws.send(json.dumps({"type": "send", **body}))
            return await frame(ws, target.ws_timeout, is_ack(body["message_id"]))
        finally:
            await ws.close()

    ack = asyncio.run(resend())
    assert ack["duplicate"] is True and ack["seq"] == first.json()["seq"], f"WebSocket retry acked as {ack}"
    assert_stored_once(target, pair, body["message_id"])


def test_recipient_offline_gets_it_once_on_sync(target: Target, pair: tuple[Any, Any]) -> None:
    sender, recipient = pair
    outgoing = send_frame(recipient.username, "contract: offline recipient")

    async def run() -> int:
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        try:
            for _ in range(RESENDS):
                await ws.send(json.dumps(outgoing))
                await frame(ws, target.ws_timeout, is_ack(outgoing["message_id"]))
        finally:
            await ws.close()
        inbox = await open_ws(target.ws_url, recipient.access_token, target.ws_timeout)
        try:
            await inbox.send(json.dumps({"type": "sync", "since": 0}))
            copies = 0
            deadline = time.monotonic() + target.ws_timeout
            while True:
                got = await frame(
                    inbox, deadline - time.monotonic(), lambda f: f.get("type") in {"message", "synced"}
                )
                if got["type"] == "synced":
                    return copies
                copies += got["message_id"] == outgoing["message_id"]
        finally:
            await inbox.close()

    copies = asyncio.run(run())
    assert copies == 1, f"sync replayed the message {copies} times"


def test_same_id_with_another_body_or_sender_is_a_conflict(target: Target, pair: tuple[Any, Any]) -> None:
    sender, recipient = pair
    original = send_frame(recipient.username, "contract: original body")

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        other = await open_ws(target.ws_url, recipient.access_token, target.ws_timeout)
        try:
            await ws.send(json.dumps(original))
            await frame(ws, target.ws_timeout, is_ack(original["message_id"]))
            await ws.send(json.dumps({**original, "body": "contract: another body"}))
            changed = await frame(ws, target.ws_timeout, lambda f: f.get("type") in {"ack", "error"})
            await other.send(json.dumps({**original, "to": sender.username}))
            stolen = await frame(
                other,
                target.ws_timeout,
                lambda f: f.get("type") in {"ack", "error"} and f.get("message_id") == original["message_id"],
            )
            return changed, stolen
        finally:
            await ws.close()
            await other.close()

    changed, stolen = asyncio.run(run())
    for kind, answer in (("another body", changed), ("another sender", stolen)):
        assert answer["type"] == "error" and answer.get("code") == "message_id_conflict", (
            f"same message_id with {kind} -> {answer}, expected error message_id_conflict"
        )
        assert "original body" not in json.dumps(answer), f"the conflict error reveals the original: {answer}"
    stored = httpx.get(
        target.url(f"/api/messages/{original['message_id']}"), headers=sender.headers, timeout=10
    )
    assert stored.status_code == 200
    message = stored.json().get("message", stored.json())
    assert message["body"] == original["body"], "a conflicting resend changed the stored message"
    assert_stored_once(target, pair, original["message_id"])
