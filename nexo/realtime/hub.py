"""This process's registry of open WebSocket connections, and push to them.

A :class:`Connection` owns one socket's outgoing side: every frame (ack,
message, error, synced) goes through its outbox and one pump task, so frames
keep their order and many are written in one go. Only the reader loop
(``ws.py``) calls ``recv()``.

Push: messages committed by this process are pushed straight from the
writer (:meth:`Hub.deliver`). Messages committed by another worker or
instance arrive as a signal "new for user X" (``broker.py``); :meth:`Hub.signal`
then reads that user's new rows from the database after a per-user cursor.
Every connection remembers the seqs it was recently pushed, so a message is
pushed to a connection once even if both paths see it. A new connection is
registered only after it is authenticated; what its user received between the
handshake and then is pushed when it is added (:meth:`Hub.add`), from a
cursor read before the handshake. The database stays the
truth: a missed signal costs only latency until the client's next ``sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge
from websockets.protocol import State

from nexo.messages import repository
from nexo.messages.repository import StoredMessage
from nexo.messages.service import Delivery
from nexo.realtime.protocol import CloseCode, ServerFrame, dumps, text_frame
from nexo.tasks import cancel_and_wait

log = logging.getLogger("nexo.realtime")

OPEN_CONNECTIONS = Gauge(
    "nexo_ws_open_connections", "Open authenticated WebSocket connections", multiprocess_mode="livesum"
)
PUSHED = Counter("nexo_ws_messages_pushed_total", "message frames pushed to recipients")
CLOSES = Counter("nexo_ws_closes_total", "WebSocket closes by Nexo, by close code", ["code"])
UNAUTHORIZED_CLOSES = Counter("nexo_ws_unauthorized_closes_total", "Connections closed with 4401")

#: Frames waiting in one connection's outbox before it is dropped as too slow.
MAX_OUTBOX = 100_000
#: How long a close waits for the client to answer the close handshake (seconds).
CLOSE_HANDSHAKE_SECONDS = 2.0
#: Seqs a connection remembers as already pushed.
RECENT_PUSHES = 4096
#: Rows read per query when a signal says a user has new messages.
SIGNAL_PAGE = 500


class Connection:
    """One authenticated socket: user, session, outbox, pump, expiry."""

    def __init__(self, ws: Any, user_id: int, username: str, session_id: str, request_id: str) -> None:
        self.ws = ws
        self.user_id = user_id
        self.username = username
        #: The session of the token it authenticated with (changes with in-band renewal).
        self.session_id = session_id
        self.request_id = request_id
        self._out: list[str] = []
        self._batching = False  # registered with the flusher for the end of this iteration
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._recent: set[int] = set()
        self._recent_order: deque[int] = deque()
        self._pump_task: asyncio.Task[None] | None = None
        self.closing = False
        self.expiry: asyncio.TimerHandle | None = None
        self._closer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name="nexo-ws-pump")

    def post(self, text: str) -> None:
        """Send one frame (never blocks).

        The first frame of a loop iteration is written at once if the socket is
        idle; frames posted after it in the same iteration (the other acks of one
        group commit, say) are queued and go out together, in one write, when the
        iteration ends. A socket that is not writable hands its queue to the pump.
        """
        if self.closing:
            return
        out = self._out
        if not out:
            if not self._batching:
                self._batching = True
                _FLUSHER.add(self)
                if self._write_now([text]):
                    return
            self._flushed.clear()
        out.append(text)
        if len(out) > MAX_OUTBOX:
            log.warning("closing a connection of user %s: it does not read its frames", self.user_id)
            out.clear()
            self.close_soon(CloseCode.GOING_AWAY, "client too slow")

    def push(self, message: Delivery | StoredMessage) -> None:
        """Send a ``message`` frame unless this connection already got that seq."""
        seq = message.seq
        if seq in self._recent:
            return
        self._recent.add(seq)
        self._recent_order.append(seq)
        if len(self._recent_order) > RECENT_PUSHES:
            self._recent.discard(self._recent_order.popleft())
        PUSHED.inc()
        self.post(
            dumps(
                {
                    "type": ServerFrame.MESSAGE.value,
                    "message_id": message.message_id,
                    "from": message.sender,
                    "to": message.recipient,
                    "body": message.body,
                    "seq": seq,
                    "server_ts": message.server_ts,
                }
            )
        )

    def close_unauthorized(self, reason: str) -> None:
        """Close with 4401 (the token expired, the session ended) from synchronous code."""
        if not self.closing and self._closer is None:
            UNAUTHORIZED_CLOSES.inc()
        self.close_soon(CloseCode.UNAUTHORIZED, reason)

    def close_soon(self, code: int, reason: str) -> None:
        """Schedule :meth:`close` from synchronous code."""
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close(code, reason))

    async def flush(self) -> None:
        await self._flushed.wait()

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close with ``code``; idempotent."""
        if self.closing:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 5.0)
        self.closing = True
        CLOSES.labels(str(int(code))).inc()
        with contextlib.suppress(Exception):
            await self.ws.close(int(code), reason.encode()[:120].decode(errors="ignore"))
            # Sanic's close only sends the frame. Wait for the client's reply, so the TCP
            # close does not race frames still in flight (an RST would lose the close frame
            # and the client would see 1006 instead of the code).
            waiter = getattr(self.ws, "wait_for_connection_lost", None)
            if waiter is not None:
                await waiter(CLOSE_HANDSHAKE_SECONDS)

    def stop(self) -> None:
        self.closing = True
        if self.expiry is not None:
            self.expiry.cancel()
        if self._pump_task is not None:
            self._pump_task.cancel()
        self._flushed.set()

    async def _pump(self) -> None:
        while True:
            if not self._out:
                self._flushed.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            frames, self._out = self._out, []
            try:
                await self._write(frames)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The socket is gone; the reader loop sees the close and cleans up.
                self._out.clear()
                self._flushed.set()
                return

    def flush_now(self) -> None:
        """End of the iteration: write what was queued if the socket takes it, else wake the pump."""
        self._batching = False
        frames = self._out
        if not frames or self.closing:
            return
        if self._write_now(frames):
            self._out = []
            self._flushed.set()
        else:
            self._wake.set()

    def _write_now(self, frames: list[str]) -> bool:
        """Sanic's send without a task switch, when the socket is writable and idle.

        Safe because no ``await`` separates the checks from the write: no other
        task can take the connection's mutex in between.
        """
        ws = self.ws
        proto = getattr(ws, "ws_proto", None)
        mutex = getattr(ws, "conn_mutex", None)
        io = getattr(ws, "io_proto", None)
        can_write = getattr(io, "_can_write", None)
        transport = getattr(io, "transport", None)
        if (
            proto is None
            or mutex is None
            or mutex.locked()
            or can_write is None
            or not can_write.is_set()
            or transport is None
            or transport.is_closing()
            or proto.state is not State.OPEN
        ):
            return False
        transport.write(_encode(proto, frames))
        return True

    async def _write(self, frames: list[str]) -> None:
        ws = self.ws
        proto = getattr(ws, "ws_proto", None)
        mutex = getattr(ws, "conn_mutex", None)
        if proto is None or mutex is None:  # not Sanic's implementation: one frame at a time
            for frame in frames:
                await ws.send(frame)
            return
        # Sanic's WebsocketImplProtocol.send, for many frames under one lock and one write.
        async with mutex:
            if proto.state is not State.OPEN:
                raise ConnectionError("websocket is not open")
            data = _encode(proto, frames)
            if data:  # an empty chunk would mean EOF to Sanic
                await ws.send_data([data])


def _encode(proto: Any, frames: list[str]) -> bytes:
    """The wire bytes of ``frames``: framed here, or by websockets if an extension is on."""
    if proto.extensions:  # none are negotiated today; if ever, websockets applies them
        for frame in frames:
            proto.send_text(frame.encode())
        return b"".join(proto.data_to_send())
    return b"".join([text_frame(frame.encode()) for frame in frames])


class _Flusher:
    """Connections with frames posted during this loop iteration, flushed once at its end.

    One per process: a Sanic worker runs one event loop.
    """

    def __init__(self) -> None:
        self._dirty: list[Connection] = []

    def add(self, conn: Connection) -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn.flush_now()
            except Exception:  # one broken socket must not keep the others' frames back
                log.exception("writing to a WebSocket failed (request %s)", conn.request_id)
                conn._wake.set()


_FLUSHER = _Flusher()


class Hub:
    """Connections of this process by user id."""

    def __init__(self) -> None:
        self._by_user: dict[int, set[Connection]] = {}
        self._cursor: dict[int, int] = {}
        self._signalled: set[int] = set()
        self._signal_task: asyncio.Task[None] | None = None
        self._signal_wake = asyncio.Event()
        self.closing = False

    @property
    def count(self) -> int:
        return sum(len(conns) for conns in self._by_user.values())

    def connections(self) -> list[Connection]:
        return [conn for conns in self._by_user.values() for conn in conns]

    async def add(self, conn: Connection, since: int) -> None:
        """Register ``conn`` for pushes and push what its user received after ``since``
        (the newest seq before its handshake; earlier messages come by ``sync``)."""
        if conn.user_id not in self._by_user:
            # Signals for this user read rows after this seq.
            self._by_user[conn.user_id] = set()
            self._cursor[conn.user_id] = since
        self._by_user[conn.user_id].add(conn)
        OPEN_CONNECTIONS.inc()
        await self._catch_up(conn, since)

    def remove(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user_id)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        OPEN_CONNECTIONS.dec()
        if not conns:
            del self._by_user[conn.user_id]
            self._cursor.pop(conn.user_id, None)

    async def _catch_up(self, conn: Connection, since: int) -> None:
        """Push to ``conn`` what its user received after ``since`` (seqs it already got are skipped)."""
        while True:
            rows = await repository.list_received(conn.user_id, since, SIGNAL_PAGE)
            for row in rows:
                conn.push(row)
            if len(rows) < SIGNAL_PAGE:
                return
            since = rows[-1].seq

    def deliver(self, deliveries: Iterable[Delivery]) -> None:
        """Push messages this process just committed to their connected recipients."""
        by_user = self._by_user
        for delivery in deliveries:
            conns = by_user.get(delivery.recipient_id)
            if conns:
                for conn in conns:
                    conn.push(delivery)

    def wants(self, user_id: int) -> bool:
        return user_id in self._by_user

    def signal(self, user_ids: Iterable[int]) -> None:
        """Another process stored messages for these users: read and push them soon."""
        added = False
        for user_id in user_ids:
            if user_id in self._by_user:
                self._signalled.add(user_id)
                added = True
        if added:
            if self._signal_task is None or self._signal_task.done():
                self._signal_task = asyncio.get_running_loop().create_task(
                    self._drain_signals(), name="nexo-ws-signals"
                )

    def signal_everyone(self) -> None:
        """After a broker reconnect: a signal may have been missed, so look for every user."""
        self.signal(list(self._by_user))

    async def _drain_signals(self) -> None:
        while self._signalled:
            users, self._signalled = self._signalled, set()
            for user_id in users:
                try:
                    await self._pull(user_id)
                except Exception:
                    log.exception("reading new messages for user %s after a signal failed", user_id)

    async def _pull(self, user_id: int) -> None:
        while True:
            cursor = self._cursor.get(user_id)
            if cursor is None:
                return
            rows = await repository.list_received(user_id, cursor, SIGNAL_PAGE)
            conns = self._by_user.get(user_id)
            if not rows or not conns:
                return
            self._cursor[user_id] = max(self._cursor.get(user_id, 0), rows[-1].seq)
            for row in rows:
                for conn in conns:
                    conn.push(row)
            if len(rows) < SIGNAL_PAGE:
                return

    async def close_all(self, code: int, reason: str) -> None:
        await asyncio.gather(*(conn.close(code, reason) for conn in self.connections()))

    async def stop(self) -> None:
        await cancel_and_wait(self._signal_task)


def on_commit(hub: Hub, publish: Callable[[set[int]], None]) -> Callable[[list[Delivery]], None]:
    """The writer's commit listener: push locally, then signal other processes."""

    def listener(deliveries: list[Delivery]) -> None:
        hub.deliver(deliveries)
        publish({d.recipient_id for d in deliveries})

    return listener
