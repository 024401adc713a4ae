"""One authenticated WebSocket's outgoing side: its outbox, its pump, its close.

Every frame (ack, message, error, synced) goes through a :class:`Connection`'s
outbox and one pump task, so frames keep their order and many are written in
one go. The first frame of a loop iteration goes to an idle, writable socket at
once; the others of that iteration are written together when it ends
(:data:`_FLUSHER`, a :class:`~nexo.platform.batching.EndOfTurn`). A client that leaves
written data unread for ``write_timeout`` seconds (:class:`_Stalls`), or whose
outbox grows past its bound, is dropped with 1008. Only the reader loop
(``ws.py``) reads the socket; the socket itself is reached through
``transport.WebSocketTransport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from prometheus_client import Counter

from nexo.messages.service import Delivery, StoredMessage
from nexo.platform.batching import EndOfTurn
from nexo.realtime.protocol import CloseCode, message_frame
from nexo.realtime.transport import WebSocketTransport

log = logging.getLogger("nexo.realtime")

PUSHED = Counter("nexo_ws_messages_pushed_total", "message frames pushed to recipients")
CLOSES = Counter("nexo_ws_closes_total", "WebSocket closes by Nexo, by close code", ["code"])
UNAUTHORIZED_CLOSES = Counter("nexo_ws_unauthorized_closes_total", "Connections closed with 4401")

#: Default of ``NEXO_WS_OUTBOX_BYTES``: what one connection may have queued and not yet
#: handed to its socket (characters of JSON text) before it is dropped as too slow.
OUTBOX_BYTES = 1024 * 1024
#: How long a close (flush, close frame, close handshake) may take before the transport
#: is aborted (seconds): the server's shutdown and other graceful closes.
CLOSE_SECONDS = 7.0
#: The same for a connection that must end now: its session ended or its token expired
#: (4401), or it is too slow a consumer. Requirement: ended within 1 s of the revocation.
END_SECONDS = 0.5
#: How often sockets with unsent data are checked for progress (seconds).
STALL_CHECK_SECONDS = 0.25
#: Seqs a connection remembers as already pushed.
RECENT_PUSHES = 4096


class Connection:
    """One authenticated socket: user, session, outbox, pump, expiry."""

    def __init__(
        self,
        transport: WebSocketTransport,
        user_id: int,
        username: str,
        session_id: str,
        request_id: str,
        write_timeout: float = 30.0,
        outbox_limit: int = OUTBOX_BYTES,
    ) -> None:
        self.transport = transport
        self.user_id = user_id
        self.username = username
        #: The session of the token it authenticated with (changes with in-band renewal).
        self.session_id = session_id
        self.request_id = request_id
        self._out: list[str] = []
        #: Characters in ``_out``; the outbox is bounded by ``outbox_limit`` of them.
        self._out_bytes = 0
        self.outbox_limit = outbox_limit
        self._batching = False  # registered with the flusher for the end of this iteration
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._recent: set[int] = set()
        self._recent_order: deque[int] = deque()
        self._pump_task: asyncio.Task[None] | None = None
        self.closing = False
        #: Set when the session ended (or the client is dropped): frames read after this are ignored.
        self.ended = False
        self.write_timeout = write_timeout
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
        self._out_bytes += len(text)
        # A batch of this iteration goes to a writable socket at its end (flush_now checks
        # it there if the socket is not writable); frames waiting for the pump count now.
        if not self._batching and self._out_bytes > self.outbox_limit:
            self._overflow()

    def _overflow(self) -> None:
        log.warning(
            "closing a connection of user %s: its outbox is over %d bytes", self.user_id, self.outbox_limit
        )
        self._out.clear()
        self._out_bytes = 0
        self.end(CloseCode.POLICY_VIOLATION, "client too slow: its outbox is full")

    @property
    def outbox_bytes(self) -> int:
        """Characters queued and not yet handed to the socket."""
        return self._out_bytes

    async def drained(self) -> None:
        """Until everything posted so far has been handed to the socket (the pump writes only
        what the socket takes, so this follows the client's reads), or the connection ends."""
        await self._flushed.wait()

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
        self.post(message_frame(message))

    def close_unauthorized(self, reason: str) -> None:
        """Close with 4401 (the token expired, the session ended) from synchronous code."""
        if not self.ended:
            UNAUTHORIZED_CLOSES.inc()
        self.end(CloseCode.UNAUTHORIZED, reason)

    def end(self, code: int, reason: str) -> None:
        """From synchronous code: no frame read from now on is acted upon; close within
        :data:`END_SECONDS` whether or not the client reads."""
        self.ended = True
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close(code, reason, END_SECONDS))

    def close_soon(self, code: int, reason: str) -> None:
        """Schedule :meth:`close` from synchronous code."""
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close(code, reason))

    async def wait_closed(self) -> None:
        """Until the close scheduled by :meth:`end` or :meth:`close_soon` is over."""
        if self._closer is not None:
            await asyncio.shield(self._closer)

    async def flush(self) -> None:
        await self._flushed.wait()

    async def close(self, code: int, reason: str, timeout: float = CLOSE_SECONDS) -> None:
        """Send what is queued, then close with ``code``; idempotent, over within ``timeout``.

        A client that reads gets its queued frames and the close frame, and answers the
        close handshake. One that does not read holds the write side (the pump waits on a
        full socket, under Sanic's send lock): then the close frame is written behind what
        is buffered and, at ``timeout``, the transport is aborted (RST, buffers freed).
        """
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout / 2)
        self.closing = True
        CLOSES.labels(str(int(code))).inc()
        transport = self.transport
        reason = reason.encode()[:120].decode(errors="ignore")
        try:
            await asyncio.wait_for(transport.close(code, reason), max(0.0, deadline - loop.time()))
        except TimeoutError:
            # The send lock is held by a write the client never reads: skip it.
            with contextlib.suppress(Exception):
                transport.end_connection(code, reason)
        except Exception as exc:  # the socket is already gone
            log.debug("closing a WebSocket (request %s): %r", self.request_id, exc)
        # Sanic's close only sends the frame. Wait for the client's reply, so the TCP
        # close does not race frames still in flight (an RST would lose the close frame
        # and the client would see 1006 instead of the code).
        lost = False
        with contextlib.suppress(Exception):
            lost = await transport.wait_closed(max(0.0, deadline - loop.time()))
        if not lost:
            transport.abort()

    def too_slow(self) -> None:
        """It left written data unread for ``write_timeout`` seconds: drop it."""
        log.warning(
            "closing a connection of user %s: it read nothing for %g s", self.user_id, self.write_timeout
        )
        self._out.clear()
        self._out_bytes = 0
        self.end(CloseCode.POLICY_VIOLATION, "client too slow: it does not read its frames")

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
            self._out_bytes = 0
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
            self._out_bytes = 0
            self._flushed.set()
        elif self._out_bytes > self.outbox_limit:
            self._overflow()
        else:
            self._wake.set()

    def _write_now(self, frames: list[str]) -> bool:
        """Write at once, without a task switch, when the socket is writable and idle."""
        unsent = self.transport.write_now(frames)
        if unsent is None:
            return False
        if unsent:  # the kernel did not take it all: is it read?
            if unsent > self.outbox_limit:  # what the transport holds counts against the outbox
                self._overflow()
            else:
                _STALLS.watch(self)
        return True

    async def _write(self, frames: list[str]) -> None:
        if self.transport.has_socket:  # the write below may wait on a client that does not read
            _STALLS.watch(self)
        await self.transport.send_frames(frames)


def _flush_connections(dirty: list[Connection]) -> None:
    for conn in dirty:
        try:
            conn.flush_now()
        except Exception:  # one broken socket must not keep the others' frames back
            log.exception("writing to a WebSocket failed (request %s)", conn.request_id)
            conn._wake.set()


#: Connections with frames posted during this loop iteration, flushed once at its end.
#: One per process: a Sanic worker runs one event loop.
_FLUSHER: EndOfTurn[Connection] = EndOfTurn(_flush_connections, name="nexo-ws-flush")


class _Stalls:
    """Connections whose socket did not take everything written to it, checked every
    :data:`STALL_CHECK_SECONDS`: one whose unsent bytes have not gone down for its
    ``write_timeout`` does not read, and is dropped. Costs nothing while every socket keeps up.
    """

    def __init__(self) -> None:
        #: connection -> (monotonic time of the last progress, unsent bytes then)
        self._watched: dict[Connection, tuple[float, int]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, conn: Connection) -> None:
        if conn in self._watched:
            return
        loop = asyncio.get_running_loop()
        self._watched[conn] = (loop.time(), conn.transport.write_buffer_size())
        if self._timer is None:
            self._timer = loop.call_later(STALL_CHECK_SECONDS, self._check)

    def _check(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn, (since, unsent) in list(self._watched.items()):
            transport = conn.transport
            size = 0 if transport.socket_closing else transport.write_buffer_size()
            if conn.closing or (size == 0 and conn._flushed.is_set()):
                del self._watched[conn]
            elif size < unsent:  # it reads: progress
                self._watched[conn] = (now, size)
            elif now - since >= conn.write_timeout:
                del self._watched[conn]
                conn.too_slow()
        if self._watched:
            self._timer = loop.call_later(STALL_CHECK_SECONDS, self._check)


_STALLS = _Stalls()
