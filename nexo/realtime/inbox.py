"""Incoming frames of one Sanic WebSocket, without Sanic's per-message hand-off.

Sanic's ``recv()`` hands each message over with a new task, two locks and
two events; at tens of thousands of frames a second that is most of the
server's time. :class:`Inbox` takes the parsed frames straight from the
protocol (through ``transport.WebSocketTransport.intercept``), queues complete
text/binary messages, answers pongs as Sanic does, and pauses reading from
the socket while too many messages wait, so a flooding client is slowed by
TCP instead of filling memory. The reader loop is still the only consumer.

Fast path: while the reader loop is parked waiting and nothing is queued, a
message is first offered to :attr:`Inbox.handler`, which may handle it at
once (a ``send`` whose checks need no I/O) and skip the task switch; order is
kept because the handler is only asked when nothing is ahead of the message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Frame, Opcode

from nexo.realtime.transport import Event, WebSocketTransport

#: Pause reading the socket above this many queued messages, or this many queued bytes;
#: resume below half of both.
HIGH_WATER = 256
HIGH_WATER_BYTES = 256 * 1024


class Inbox:
    """Complete messages (``str`` for text, ``bytes`` for binary) in arrival order."""

    def __init__(
        self, transport: WebSocketTransport, frame_rate: float = 200.0, frame_burst: float = 12000.0
    ) -> None:
        self.transport = transport
        # The frame budget: a token bucket refilled lazily, only when it runs out.
        self._loop = asyncio.get_running_loop()
        self._rate = frame_rate
        self._burst = frame_burst
        self._tokens = frame_burst
        self._stamp = self._loop.time()
        self._throttled = False
        self._items: deque[str | bytes] = deque()
        self._bytes = 0  # len() of the queued items
        self._ready = asyncio.Event()
        self._closed = False
        self._paused = False
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._text = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting = False
        #: Called with a message when nothing is ahead of it; True means it was handled.
        self.handler: Callable[[str | bytes], bool] | None = None
        transport.intercept(self._data_received, self._process_events)
        early = transport.take_early_message()  # it reached Sanic before this inbox existed
        if early is not None:
            self._items.append(early)
            self._ready.set()

    def _data_received(self, data: bytes) -> None:
        """Sanic's ``data_received`` without a task per read when there is only data.

        Data frames are queued synchronously, in order. Anything else (bytes the
        protocol must send — pong, close reply — or a pong to match) goes the
        usual asynchronous way.
        """
        to_send, events = self.transport.parse(data)
        rest = self._take_data(events) if events else []
        if to_send or rest:
            task = asyncio.get_running_loop().create_task(self.transport.answer(to_send, rest))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take_data(self, events: Sequence[Event]) -> list[Event]:
        """Queue the data frames of ``events``; return the others (pongs, close)."""
        rest: list[Event] = []
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
            else:
                if opcode is Opcode.CLOSE:
                    self._closed = True
                rest.append(event)
        if self._items or self._closed:  # frames the fast path took need no wake-up
            self._ready.set()
        if (len(self._items) > HIGH_WATER or self._bytes > HIGH_WATER_BYTES) and not self._paused:
            self._paused = self.transport.pause_reading()
        return rest

    async def _process_events(self, events: Sequence[Event]) -> None:
        for event in self._take_data(events):
            if isinstance(event, Frame) and event.opcode is Opcode.PONG:
                await self.transport.process_pong(event)

    def _add(self, data: bytes | bytearray | memoryview, text: bool) -> None:
        self._tokens -= 1.0  # every frame, of any type, valid or not, spends the budget
        if self._tokens < 0.0:
            self._refill()
        item: str | bytes
        if text:
            try:
                item = bytes(data).decode()
            except UnicodeDecodeError:
                item = b""  # answered as a bad frame, like binary
        else:
            item = bytes(data)
        handler = self.handler
        if handler is not None and self._waiting and not self._items and handler(item):
            return
        self._items.append(item)
        self._bytes += len(item)

    def spend(self, tokens: float) -> float:
        """Charge ``tokens`` frames of work done for this connection (a ``sync`` replay) to
        its budget; seconds until the budget is positive again (0.0 when it still is).
        Over budget, the socket is not read until then, as for frames."""
        self._tokens -= tokens
        if self._tokens >= 0.0:
            return 0.0
        self._refill()
        return max(0.0, -self._tokens / self._rate)

    def _refill(self) -> None:
        now = self._loop.time()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 0.0 and not self._throttled:
            # Over budget: stop reading the socket until the bucket has a token again.
            if self.transport.pause_reading():
                self._throttled = True
                self._loop.call_later(-self._tokens / self._rate, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttled = False
        self._refill()
        if not self._throttled and not self._paused and not self.transport.socket_closing:
            self.transport.resume_reading()

    def take_ready(self, limit: int) -> list[str | bytes]:
        """Up to ``limit`` more messages that are already queued (no waiting)."""
        items = self._items
        taken = [items.popleft() for _ in range(min(limit, len(items)))]
        self._bytes -= sum(map(len, taken))
        self._maybe_resume()
        return taken

    def _maybe_resume(self) -> None:
        if self._paused and len(self._items) < HIGH_WATER // 2 and self._bytes < HIGH_WATER_BYTES // 2:
            if not self._throttled:
                self.transport.resume_reading()
            self._paused = False

    async def get(self, timeout: float | None = None) -> str | bytes | None:
        """The next message; ``None`` after ``timeout`` seconds; raises once the peer closed."""
        while not self._items:
            if self._closed:
                raise ConnectionClosedOK(None, None)
            self._ready.clear()
            self._waiting = True
            try:
                if timeout is None:
                    await self._ready.wait()
                else:
                    try:
                        await asyncio.wait_for(self._ready.wait(), timeout)
                    except TimeoutError:
                        return None
            finally:
                self._waiting = False
        item = self._items.popleft()
        self._bytes -= len(item)
        self._maybe_resume()
        return item
