"""The WebSocket transport seam: the only module that touches Sanic's and websockets' internals.

Sanic hands the ``/ws`` handler a :class:`sanic.Websocket`
(``WebsocketImplProtocol``). Its public API (``recv``, ``send``) costs a task
switch, locks and events per message, so Nexo goes under it, and only here:

- reading: the connection's ``data_received``/``process_events`` are replaced
  (:meth:`WebSocketTransport.intercept`), so frames parsed by the websockets
  ``ServerProtocol`` go straight to the inbox; a message Sanic's assembler took
  before that is adopted; pongs and close replies still go Sanic's way; the
  TCP transport is paused and resumed for backpressure and the frame budget;
- writing: many frames in one ``transport.write``, without a task switch while
  the socket is idle and writable (Sanic's send lock free, its ``_can_write``
  set), else under Sanic's send lock (:meth:`WebSocketTransport.send_frames`);
- closing: the close handshake, ending the connection when a write holds the
  send lock, waiting for the peer's reply, and aborting with an RST.

Everything else in ``nexo.realtime`` uses this façade, typed against the real
classes. ``tests/realtime/test_transport_canary.py`` fails, naming the Sanic and
websockets versions, when an upgrade removes or changes an internal used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.frames import Frame
from websockets.protocol import Event, State

from nexo.realtime.protocol import text_frame

__all__ = ["Event", "Frame", "WebSocketTransport", "WebsocketImplProtocol"]


class WebSocketTransport:
    """One Sanic WebSocket connection, seen through what Nexo needs of it."""

    __slots__ = ("ws",)

    def __init__(self, ws: WebsocketImplProtocol) -> None:
        self.ws = ws

    def _socket(self) -> asyncio.Transport | None:
        """The TCP transport under the connection (None before it is made)."""
        return getattr(self.ws.io_proto, "transport", None)

    # -- reading ---------------------------------------------------------------------------

    def intercept(
        self,
        data_received: Callable[[bytes], None],
        process_events: Callable[[Sequence[Event]], Awaitable[None]],
    ) -> None:
        """Route the bytes read from the socket, and the events Sanic processes, to these."""
        ws: Any = self.ws  # instance attributes shadowing methods: what mypy cannot type
        ws.process_events = process_events
        ws.data_received = data_received

    def take_early_message(self) -> str | bytes | None:
        """A complete message that reached Sanic's assembler before :meth:`intercept`."""
        assembler = getattr(self.ws, "assembler", None)
        if assembler is None or not assembler.message_complete.is_set():
            return None
        joiner: Any = b"" if assembler.decoder is None else ""
        message: str | bytes = joiner.join(assembler.chunks)
        assembler.chunks = []
        assembler.message_complete.clear()
        assembler.message_fetched.set()
        return message

    def parse(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        """Feed bytes read from the socket to the protocol: (bytes it must send, its events)."""
        proto = self.ws.ws_proto
        proto.receive_data(data)
        return proto.data_to_send(), proto.events_received()

    def answer(self, to_send: list[bytes], events: list[Event]) -> Coroutine[Any, Any, None]:
        """Sanic's handling of bytes to send (pong, close reply) and of non-data events."""
        return self.ws.async_data_received(to_send, events)  # type: ignore[no-any-return]

    async def process_pong(self, frame: Frame) -> None:
        await self.ws.process_pong(frame)

    def pause_reading(self) -> bool:
        """Stop reading the socket; False when there is no socket to pause."""
        transport = self._socket()
        if transport is None:
            return False
        transport.pause_reading()
        return True

    def resume_reading(self) -> None:
        transport = self._socket()
        if transport is not None:
            transport.resume_reading()

    @property
    def socket_closing(self) -> bool:
        """True when the TCP transport is closing (or there is none)."""
        transport = self._socket()
        return transport is None or transport.is_closing()

    # -- writing ---------------------------------------------------------------------------

    @property
    def has_socket(self) -> bool:
        return self._socket() is not None

    def write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the kernel (the peer is not reading them)."""
        transport = self._socket()
        return 0 if transport is None else transport.get_write_buffer_size()

    def write_now(self, frames: list[str]) -> int | None:
        """Sanic's send without a task switch: write ``frames`` at once if the socket is open,
        writable and no send holds its lock; the bytes left unsent then, or None (not written).

        Safe because no ``await`` separates the checks from the write: no other task can
        take the connection's send lock in between.
        """
        ws = self.ws
        io = ws.io_proto
        transport = self._socket()
        if (
            ws.conn_mutex.locked()
            or io is None
            or not io._can_write.is_set()
            or transport is None
            or transport.is_closing()
            or ws.ws_proto.state is not State.OPEN
        ):
            return None
        transport.write(self._encode(frames))
        return transport.get_write_buffer_size()

    async def send_frames(self, frames: list[str]) -> None:
        """Sanic's ``send`` for many frames under one lock and one write (it waits while the
        socket's buffer is full); ``ConnectionError`` once the connection is not open."""
        ws = self.ws
        async with ws.conn_mutex:
            if ws.ws_proto.state is not State.OPEN:
                raise ConnectionError("websocket is not open")
            data = self._encode(frames)
            if data:  # an empty chunk would mean EOF to Sanic
                await ws.send_data([data])

    def _encode(self, frames: list[str]) -> bytes:
        """The wire bytes of ``frames``: framed here, or by websockets if an extension is on."""
        proto = self.ws.ws_proto
        if proto.extensions:  # none are negotiated today; if ever, websockets applies them
            for frame in frames:
                proto.send_text(frame.encode())
            return b"".join(proto.data_to_send())
        return b"".join([text_frame(frame.encode()) for frame in frames])

    # -- closing ---------------------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` (under the send lock, after what is being written)."""
        await self.ws.close(int(code), reason)

    def end_connection(self, code: int, reason: str) -> None:
        """Close without the send lock (a write the client never reads holds it)."""
        self.ws.end_connection(int(code), reason)

    async def wait_closed(self, timeout: float) -> bool:
        """Until the peer answered the close and the TCP connection is gone; False on timeout."""
        return await self.ws.wait_for_connection_lost(timeout)

    def abort(self) -> None:
        """Drop the TCP connection now: RST (no lingering unsent data), buffers freed."""
        transport = self._socket()
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
