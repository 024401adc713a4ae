"""Incoming frames of one Sanic WebSocket, without Sanic's per-message hand-off.

Sanic's ``recv()`` hands each message over with a new task, two locks and
two events; at tens of thousands of frames a second that is most of the
server's time. :class:`Inbox` takes the parsed frames straight from the
protocol (it replaces the connection's ``process_events``), queues complete
text/binary messages, answers pongs as Sanic does, and pauses reading from
the socket while too many messages wait, so a flooding client is slowed by
TCP instead of filling memory. The reader loop is still the only consumer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Frame, Opcode

#: Pause reading the socket above this many queued messages; resume below half.
HIGH_WATER = 256


class Inbox:
    """Complete messages (``str`` for text, ``bytes`` for binary) in arrival order."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._items: deque[str | bytes] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._paused = False
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._text = True
        ws.process_events = self._process_events

    async def _process_events(self, events: Sequence[Any]) -> None:
        for event in events:
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if event.fin:
                    self._add(event.data, opcode is Opcode.TEXT)
                else:
                    self._chunks = [event.data]
                    self._text = opcode is Opcode.TEXT
            elif opcode is Opcode.CONT:
                self._chunks.append(event.data)
                if event.fin:
                    data, self._chunks = b"".join(self._chunks), []
                    self._add(data, self._text)
            elif opcode is Opcode.PONG:
                await self.ws.process_pong(event)
            elif opcode is Opcode.CLOSE:
                self._closed = True
        self._ready.set()
        if len(self._items) > HIGH_WATER and not self._paused:
            transport = getattr(self.ws.io_proto, "transport", None)
            if transport is not None:
                transport.pause_reading()
                self._paused = True

    def _add(self, data: bytes | bytearray | memoryview, text: bool) -> None:
        if text:
            try:
                self._items.append(bytes(data).decode())
            except UnicodeDecodeError:
                self._items.append(b"")  # answered as a bad frame, like binary
        else:
            self._items.append(bytes(data))

    def take_ready(self, limit: int) -> list[str | bytes]:
        """Up to ``limit`` more messages that are already queued (no waiting)."""
        items = self._items
        taken = [items.popleft() for _ in range(min(limit, len(items)))]
        self._maybe_resume()
        return taken

    def _maybe_resume(self) -> None:
        if self._paused and len(self._items) < HIGH_WATER // 2:
            transport = getattr(self.ws.io_proto, "transport", None)
            if transport is not None:
                transport.resume_reading()
            self._paused = False

    async def get(self, timeout: float | None = None) -> str | bytes | None:
        """The next message; ``None`` after ``timeout`` seconds; raises once the peer closed."""
        while not self._items:
            if self._closed:
                raise ConnectionClosedOK(None, None)
            self._ready.clear()
            if timeout is None:
                await self._ready.wait()
            else:
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout)
                except TimeoutError:
                    return None
        item = self._items.popleft()
        self._maybe_resume()
        return item
