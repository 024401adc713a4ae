"""Helpers for the messaging tests: accounts, sockets, frames, the runbook's duplicate query."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from contracts.client import Account
from contracts.server import LocalServer

#: Settings for servers that create many accounts quickly.
FAST_ENV = {
    "NEXO_AUTH_RATE_LIMIT": "100000/minute",
    "NEXO_RATE_LIMIT": "100000/minute",
    "NEXO_ARGON2_MEMORY_KIB": "8192",
    "NEXO_ARGON2_TIME_COST": "1",
}

DUPLICATE_QUERY = "SELECT message_id, COUNT(*) FROM messages GROUP BY message_id HAVING COUNT(*) > 1"


def account(server: LocalServer) -> Account:
    return Account.create(server.base_url, prefix="ws")


async def open_ws(server: LocalServer, token: str | None = None, **kwargs: Any) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    return await connect(server.ws_url, additional_headers=headers, ping_interval=None, **kwargs)


async def online(server: LocalServer, token: str) -> ClientConnection:
    """A connection that is authenticated and registered for pushes.

    The server authenticates after the handshake, so a just-opened socket may
    not be registered yet; a ``sync`` round trip (as a real client does on
    connect) proves it is.
    """
    ws = await open_ws(server, token)
    await ws.send(json.dumps({"type": "sync", "since": 2**53}))
    await next_frame(ws, "synced")
    return ws


def send_frame(to: str, body: str = "hello", message_id: str | None = None) -> str:
    return json.dumps({"type": "send", "message_id": message_id or str(uuid.uuid4()), "to": to, "body": body})


async def next_frame(ws: ClientConnection, kind: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """The next JSON frame (of type ``kind`` if given; others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind or 'frame'} within {timeout} s")
        data = json.loads(await asyncio.wait_for(ws.recv(), left))
        if kind is None or data.get("type") == kind:
            return data


async def frames_within(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except (TimeoutError, ConnectionClosed):
            break
    return got


async def close_code(ws: ClientConnection, timeout: float = 10.0) -> tuple[int | None, str]:
    """Wait for the server's close; (code, reason)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "no close frame")
    await ws.close()
    raise AssertionError(f"still open after {timeout} s")


async def send_and_ack(
    ws: ClientConnection, to: str, body: str = "hello", message_id: str | None = None
) -> dict[str, Any]:
    mid = message_id or str(uuid.uuid4())
    await ws.send(send_frame(to, body, mid))
    while True:
        frame = await next_frame(ws)
        if frame.get("message_id") == mid and frame["type"] in {"ack", "error"}:
            return frame


def duplicate_rows(server: LocalServer) -> list[Any]:
    """The runbook's duplicate query on this server's database (sqlite3 file or PostgreSQL)."""
    url = server.env.get("DATABASE_URL")
    if url:
        import asyncpg

        async def query() -> list[Any]:
            conn = await asyncpg.connect(url)
            try:
                return list(await conn.fetch(DUPLICATE_QUERY))
            finally:
                await conn.close()

        return list(_run_in_thread(query))
    with sqlite3.connect(Path(server.data_dir) / "nexo.db") as db:
        return db.execute(DUPLICATE_QUERY).fetchall()


def count_rows(server: LocalServer, message_id: str) -> int:
    url = server.env.get("DATABASE_URL")
    if url:
        import asyncpg

        async def query() -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(
                    await conn.fetchval("SELECT COUNT(*) FROM messages WHERE message_id = $1", message_id)
                )
            finally:
                await conn.close()

        return _run_in_thread(query)
    with sqlite3.connect(Path(server.data_dir) / "nexo.db") as db:
        return int(
            db.execute("SELECT COUNT(*) FROM messages WHERE message_id = ?", (message_id,)).fetchone()[0]
        )


def _run_in_thread(factory: Any) -> Any:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def stored_seqs(server: LocalServer) -> dict[str, int]:
    """Every stored ``message_id`` with its seq, straight from the database."""
    url = server.env.get("DATABASE_URL")
    if url:
        import asyncpg

        async def query() -> dict[str, int]:
            conn = await asyncpg.connect(url)
            try:
                return {
                    r["message_id"]: int(r["id"])
                    for r in await conn.fetch("SELECT id, message_id FROM messages")
                }
            finally:
                await conn.close()

        return dict(_run_in_thread(query))
    with sqlite3.connect(Path(server.data_dir) / "nexo.db") as db:
        return {mid: int(seq) for seq, mid in db.execute("SELECT id, message_id FROM messages")}
