"""A push is not lost when the instance that stored the message dies (issue 14, finding 9).

Two instances x two workers on one PostgreSQL database and one Redis; bob is
connected to instance B all along; alice streams to bob through instance A,
which is killed with SIGKILL mid-stream; alice reconnects to B and resends what
was not acked, then sends more. Every message stored for bob must reach each of
his connections as a push, exactly once, in seq order, within the documented
bound (docs/security.md "Pushes survive the death of an instance").

The window is made deterministic: A reaches Redis through a proxy that, once
armed, swallows A's ``PUBLISH`` commands (what a process dying between its
commit and its signal does), so every message A commits after that has no
signal at all; alice then resends through B (``swallowed``) or is gone for good
(``swallowed_sender_gone``: only B's periodic sweep can find those messages). A
third round kills A with no proxy trick, at a random moment (``in_flight``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from contracts.server import LocalServer, random_secret
from tests.conftest import REDIS_URL, ServerFactory
from tests.support.realtime import FAST_ENV, account, online, open_ws, send_frame, stored_seqs

pytestmark = pytest.mark.server

#: The catch-up period the servers run with here (NEXO_WS_PUSH_SWEEP_SECONDS).
SWEEP_SECONDS = 1.0
#: The documented bound is one sweep period plus one catch-up read; the rest is a margin
#: for a noisy shared machine.
PUSH_BOUND = SWEEP_SECONDS + 5.0
IN_FLIGHT = 16


class SignalSwallower:
    """A TCP proxy to Redis that, once armed, drops every connection's data from the
    first ``PUBLISH`` on (replies still flow): the signals die, the rest works."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        self.db_path = parsed.path or "/0"
        self.armed = False
        self.swallowed = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self.db_path}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        held = False

        async def outgoing() -> None:
            nonlocal held
            while data := await reader.read(65536):
                if self.armed and b"PUBLISH" in data.upper():
                    held = True
                if held:
                    self.swallowed += 1
                    continue
                up_writer.write(data)
                await up_writer.drain()

        async def incoming() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(outgoing()), asyncio.ensure_future(incoming())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()


@dataclass
class Stream:
    """Alice's messages to one recipient: what was sent, in order, and what was acked."""

    to: str
    sent: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)

    def body(self, mid: str) -> str:
        return f"failover {mid}"

    async def run(self, ws: ClientConnection, mids: list[str] | None = None) -> None:
        """Send ``mids`` (new ones forever if None) with IN_FLIGHT unacked; return when all
        are acked, or when the connection dies."""
        todo = list(mids) if mids is not None else None
        waiting: set[str] = set()
        with contextlib.suppress(ConnectionClosed):
            while True:
                while len(waiting) < IN_FLIGHT and (todo is None or todo):
                    mid = todo.pop(0) if todo is not None else str(uuid.uuid4())
                    if mid not in self.sent:
                        self.sent.append(mid)
                    waiting.add(mid)
                    await ws.send(send_frame(self.to, self.body(mid), mid))
                if not waiting:
                    return
                frame = json.loads(await ws.recv())
                if frame.get("type") == "ack":
                    waiting.discard(frame["message_id"])
                    self.acked.add(frame["message_id"])
                elif frame.get("type") == "error":
                    raise AssertionError(f"send refused: {frame}")


async def collect(ws: ClientConnection, into: list[tuple[str, int]]) -> None:
    with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") == "message":
                into.append((frame["message_id"], int(frame["seq"])))


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll ``predicate`` (state other tasks change) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # noqa: ASYNC110 - polled, no event to wait on
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("signals", ["swallowed", "swallowed_sender_gone", "in_flight"])
async def test_messages_stored_by_an_instance_killed_mid_stream_reach_the_recipient_elsewhere(
    pg_url: str, make_server: ServerFactory, signals: str
) -> None:
    proxy = SignalSwallower(REDIS_URL)
    proxy_url = await proxy.start()
    env = {
        **FAST_ENV,
        "DATABASE_URL": pg_url,
        "JWT_SECRET": random_secret(),
        "NEXO_REDIS_PREFIX": f"t{uuid.uuid4().hex[:10]}",
        "NEXO_WS_PUSH_SWEEP_SECONDS": str(SWEEP_SECONDS),
    }
    # Servers start in a thread: instance A talks to Redis through the proxy in this loop.
    first: LocalServer = await asyncio.to_thread(
        make_server, {**env, "REDIS_URL": REDIS_URL if signals == "in_flight" else proxy_url}, workers=2
    )
    second: LocalServer = await asyncio.to_thread(make_server, {**env, "REDIS_URL": REDIS_URL}, workers=2)
    alice, bob = await asyncio.to_thread(account, second), await asyncio.to_thread(account, second)
    # Two connections: with two workers on B they usually land on both.
    receivers = [await online(second, bob.access_token) for _ in range(2)]
    pushed: list[list[tuple[str, int]]] = [[] for _ in receivers]
    readers = [asyncio.ensure_future(collect(ws, got)) for ws, got in zip(receivers, pushed, strict=True)]
    stream = Stream(bob.username)
    try:
        on_first = await open_ws(first, alice.access_token)
        streaming = asyncio.ensure_future(stream.run(on_first))
        await until(lambda: len(stream.acked) >= 100, 30)
        assert len(stream.acked) >= 100, "the stream through instance A did not start"
        if signals != "in_flight":
            proxy.armed = True
            await until(lambda: proxy.swallowed > 0, 10)
            assert proxy.swallowed > 0, "no signal was published after arming"
            await asyncio.sleep(0.3)
        else:
            await asyncio.sleep(random.uniform(0.05, 0.5))
        await asyncio.to_thread(first.kill)
        await asyncio.wait_for(streaming, 10)
        killed_at = time.monotonic()

        on_second = None
        if signals != "swallowed_sender_gone":
            # Alice reconnects to B, resends what A did not ack (in order), then sends more.
            on_second = await open_ws(second, alice.access_token)
            unacked = [mid for mid in stream.sent if mid not in stream.acked]
            fresh = [str(uuid.uuid4()) for _ in range(40)]
            await asyncio.wait_for(stream.run(on_second, unacked + fresh), 30)
            assert set(stream.sent) == stream.acked
        stored = await asyncio.to_thread(stored_seqs, second)
        if on_second is not None:
            assert set(stored) == set(stream.sent), "a message alice sent is not stored exactly once"
        else:  # only the sweep can find what A stored after the signals stopped
            assert stream.acked <= set(stored) <= set(stream.sent)
            assert len(stored) > len(stream.acked), "nothing was stored after the signals stopped"

        want = set(stored)
        await until(lambda: all(want <= {mid for mid, _ in got} for got in pushed), PUSH_BOUND + 10)
        waited = time.monotonic() - killed_at
        await asyncio.sleep(0.5)  # repeats, if any, arrive too
        for got in pushed:
            mids = [mid for mid, _ in got]
            missing = want - set(mids)
            assert not missing, f"{len(missing)} of {len(want)} stored messages never pushed"
            repeats = len(mids) - len(set(mids))
            assert repeats == 0, f"{repeats} messages pushed twice to one connection"
            seqs = [seq for _, seq in got]
            assert seqs == sorted(seqs), "pushes of one sender out of seq order"
            assert all(stored[mid] == seq for mid, seq in got)
        assert waited < PUSH_BOUND, f"the last push came {waited:.1f} s after the kill"
        if on_second is not None:
            await on_second.close()
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for ws in receivers:
            await ws.close()
        await proxy.close()
