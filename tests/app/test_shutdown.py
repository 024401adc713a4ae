"""Graceful shutdown (issue 8): SIGTERM during a send storm loses no acknowledged message.

Several senders stream ``send`` frames over WebSocket, each keeping a window of
unacknowledged sends full.
Mid-storm the whole server process group gets SIGTERM. The server must close the
sockets with 1001 (going away), exit on its own, and every message it acked must
be stored, once, with the acked ``seq``: checked over the API after a restart on
the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from contracts.client import Account
from contracts.server import LocalServer
from tests.conftest import ServerFactory

pytestmark = pytest.mark.server

SENDERS = 4
STORM_SECONDS = 1.5
#: Sends in flight per sender (a client that keeps a window of unacked messages).
WINDOW = 16
GOING_AWAY = 1001


async def _storm(
    server: LocalServer,
    sender: Account,
    to: str,
    acked: dict[str, int],
    closes: list[int | None],
    errors: list[str],
) -> int:
    """Send until the server closes; record acks. Returns how many sends went out."""
    headers = {"Authorization": f"Bearer {sender.access_token}"}
    sent = 0
    window = asyncio.Semaphore(WINDOW)
    async with connect(server.ws_url, additional_headers=headers, ping_interval=None) as ws:

        async def reader() -> None:
            try:
                async for raw in ws:
                    data = json.loads(raw)
                    if data.get("type") == "ack":
                        acked[data["message_id"]] = int(data["seq"])
                        window.release()
                    elif data.get("type") == "error":
                        errors.append(data["code"])
                        window.release()
            except ConnectionClosed:
                pass
            finally:
                for _ in range(WINDOW):  # unblock the sender
                    window.release()

        reading = asyncio.create_task(reader())
        try:
            while not reading.done():
                await window.acquire()
                frame = {"type": "send", "message_id": str(uuid.uuid4()), "to": to, "body": f"storm ü {sent}"}
                await ws.send(json.dumps(frame))
                sent += 1
        except ConnectionClosed:
            pass
        await reading
        closes.append(ws.close_code)
    return sent


def _stored(server: LocalServer, account: Account) -> dict[str, int]:
    """Every message of ``account`` (sent or received) by message_id → seq, over the API."""
    seen: dict[str, int] = {}
    since = 0
    with httpx.Client(base_url=server.base_url, headers=account.headers, timeout=30) as client:
        while True:
            response = client.get("/api/messages", params={"since": since, "limit": 1000})
            assert response.status_code == 200, response.text
            batch: list[dict[str, Any]] = response.json()["messages"]
            if not batch:
                return seen
            for message in batch:
                assert message["message_id"] not in seen, "a message came back twice"
                seen[message["message_id"]] = int(message["seq"])
            since = int(batch[-1]["seq"])


def test_sigterm_during_a_send_storm_loses_no_acked_message(make_server: ServerFactory) -> None:
    server = make_server({"NEXO_WS_RATE_LIMIT": "1000000/minute"})
    recipient = Account.create(server.base_url)
    senders = [Account.create(server.base_url) for _ in range(SENDERS)]
    acked: dict[str, int] = {}
    closes: list[int | None] = []
    errors: list[str] = []
    sent: list[int] = []

    def terminate_later() -> None:
        time.sleep(STORM_SECONDS)
        assert server.process is not None
        server._signal_group(signal.SIGTERM)

    async def run() -> None:
        storms = [_storm(server, s, recipient.username, acked, closes, errors) for s in senders]
        sent.extend(await asyncio.gather(*storms))

    killer = threading.Thread(target=terminate_later)
    killer.start()
    asyncio.run(run())
    killer.join()
    assert server.process is not None
    started = time.monotonic()
    code = server.process.wait(30)
    assert code == 0, server.log_tail()
    assert time.monotonic() - started < 30
    assert len(acked) > 50, f"only {len(acked)} acks before SIGTERM: the storm did not get going"
    assert closes == [GOING_AWAY] * SENDERS, closes
    # A send the stopping server refuses gets the code of an uncommitted batch (HTTP's 503
    # code too): not stored, resend the same message_id.
    assert set(errors) <= {"service_unavailable"}, errors

    # Restart on the same data and read everything back.
    again = LocalServer(server.data_dir, server.env)
    with contextlib.ExitStack() as stack:
        stack.enter_context(again)
        for sender in senders:
            sender.base_url = again.base_url
            sender.relogin()
        recipient.base_url = again.base_url
        recipient.relogin()
        stored = _stored(again, recipient)
    lost = {mid for mid in acked if mid not in stored}
    assert not lost, f"{len(lost)} acked messages lost of {len(acked)} (sent {sum(sent)})"
    moved = {mid for mid, seq in acked.items() if stored[mid] != seq}
    assert not moved, f"{len(moved)} messages stored under another seq than acked"
