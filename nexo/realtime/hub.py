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

from prometheus_client import Counter, Gauge, Histogram

from nexo.messages import service as messages
from nexo.messages.service import CommitListener, Delivery, Gate, StoredMessage
from nexo.realtime.protocol import CloseCode, message_frame
from nexo.realtime.transport import WebSocketTransport
from nexo.tasks import cancel_and_wait, repeat

log = logging.getLogger("nexo.realtime")

OPEN_CONNECTIONS = Gauge(
    "nexo_ws_open_connections", "Open authenticated WebSocket connections", multiprocess_mode="livesum"
)
PUSHED = Counter("nexo_ws_messages_pushed_total", "message frames pushed to recipients")
CLOSES = Counter("nexo_ws_closes_total", "WebSocket closes by Nexo, by close code", ["code"])
SWEEPS = Counter("nexo_ws_push_sweeps_total", "Sweep queries looking for messages whose push signal was lost")
SWEEP_SECONDS = Histogram(
    "nexo_ws_push_sweep_seconds",
    "Time of one sweep over every connected user of a worker",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
SWEEP_CATCH_UPS = Counter(
    "nexo_ws_push_sweep_catch_ups_total", "Users a sweep found with stored messages not pushed (lost signals)"
)
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
#: How often a process with peers re-reads the newest seq (``Hub.seq_hint``); a socket
#: that upgrades may be pushed messages committed up to this long before its handshake.
HINT_SECONDS = 0.25
#: How often sockets with unsent data are checked for progress (seconds).
STALL_CHECK_SECONDS = 0.25
#: Seqs a connection remembers as already pushed.
RECENT_PUSHES = 4096
#: Rows read per query when a signal says a user has new messages.
SIGNAL_PAGE = 500
#: Connected users per sweep query.
SWEEP_BATCH = 5000
#: A sweep reads the rows committed since the last one when there are at most this many
#: (or at most as many as connected users); else it counts per user.
SWEEP_WINDOW = 2000
#: Direct pushes tracked above a user's cursor before a read moves the cursor past them.
MAX_UNSWEPT = 8192


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


class _Feed:
    """One user's connections in this process, and how far their pushes are known complete."""

    __slots__ = ("conns", "cursor", "deferred", "pulling", "pushed", "user_id")

    def __init__(self, user_id: int, cursor: int) -> None:
        self.user_id = user_id
        self.conns: set[Connection] = set()
        #: Every message for this user with seq <= cursor has been pushed here (or is older
        #: than its connections). Seqs are handed out in commit order, so once a read sees
        #: seq s, every lower seq is committed and visible too.
        self.cursor = cursor
        #: Seqs above the cursor this process pushed straight from its writer.
        self.pushed: set[int] = set()
        #: A read of this user's rows is due or running: direct pushes wait for it (the read
        #: pushes them in seq order, after anything older that was missed).
        self.pulling = False
        #: A direct push was held back while pulling: read again before stopping.
        self.deferred = False

    def advance(self, seq: int) -> None:
        if seq > self.cursor:
            self.cursor = seq
            if self.pushed:
                self.pushed = {s for s in self.pushed if s > seq}


class Hub:
    """Connections of this process by user id.

    With ``sweep_seconds`` (several processes share the database): every pushed
    seq is tracked per user, a duplicate resend or a signal reads the user's rows
    after its cursor, and a sweep every ``sweep_seconds`` counts, in one query per
    :data:`SWEEP_BATCH` connected users, the rows each received after its cursor;
    a user with a row this process never pushed gets a catch-up read. A message
    whose signal was lost (its instance died between commit and signal, the
    broker dropped it) is thus pushed within one period plus one read.
    """

    def __init__(self, sweep_seconds: float | None = None) -> None:
        self._feeds: dict[int, _Feed] = {}
        self._signalled: set[int] = set()
        self._signal_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self.sweep_seconds = sweep_seconds
        #: The newest seq the last sweep saw; users at it need only rows after it checked.
        self._mark: int | None = None
        #: The newest seq this process knows committed, read without a query when a socket
        #: upgrades (before it is authenticated): from this process's commits and, with
        #: other processes, a read every HINT_SECONDS.
        self.seq_hint = 0
        self._hint_task: asyncio.Task[None] | None = None
        self.closing = False

    @property
    def tracking(self) -> bool:
        """True when messages may be stored by another process (pushes are tracked and swept)."""
        return self.sweep_seconds is not None

    @property
    def count(self) -> int:
        return sum(len(feed.conns) for feed in self._feeds.values())

    def connections(self) -> list[Connection]:
        return [conn for feed in self._feeds.values() for conn in feed.conns]

    def start(self) -> None:
        if self.sweep_seconds is not None:
            self._sweep_task = repeat(self.sweep_seconds, self._sweep_once, "nexo-ws-sweep")

    async def add(self, conn: Connection, since: int) -> None:
        """Register ``conn`` for pushes and push what its user received after ``since``
        (the newest seq before its handshake; earlier messages come by ``sync``)."""
        feed = self._feeds.get(conn.user_id)
        if feed is None:
            # Signals and sweeps for this user read rows after this seq.
            feed = self._feeds[conn.user_id] = _Feed(conn.user_id, since)
        feed.conns.add(conn)
        OPEN_CONNECTIONS.inc()
        await self._catch_up(conn, since)

    def remove(self, conn: Connection) -> None:
        feed = self._feeds.get(conn.user_id)
        if feed is None or conn not in feed.conns:
            return
        feed.conns.discard(conn)
        OPEN_CONNECTIONS.dec()
        if not feed.conns:
            del self._feeds[conn.user_id]

    async def _catch_up(self, conn: Connection, since: int) -> None:
        """Push to ``conn`` what its user received after ``since`` (seqs it already got are skipped)."""
        while True:
            rows = await messages.list_received(conn.user_id, since, SIGNAL_PAGE)
            for row in rows:
                conn.push(row)
            if len(rows) < SIGNAL_PAGE:
                return
            since = rows[-1].seq

    def deliver(self, deliveries: Iterable[Delivery]) -> None:
        """Push messages this process just committed to their connected recipients."""
        feeds = self._feeds
        tracking = self.tracking
        for delivery in deliveries:
            feed = feeds.get(delivery.recipient_id)
            if feed is None:
                continue
            if feed.pulling:
                feed.deferred = True  # the running read pushes it, in order
                continue
            for conn in feed.conns:
                conn.push(delivery)
            if tracking and delivery.seq > feed.cursor:
                feed.pushed.add(delivery.seq)
                if len(feed.pushed) > MAX_UNSWEPT:
                    self.signal((feed.user_id,))  # one read moves the cursor past them

    def resent(self, user_ids: Iterable[int]) -> None:
        """Messages for these users were sent again and found stored: whoever stored them
        may have died before signalling, so read their rows now."""
        if self.tracking:
            self.signal(user_ids)

    def signal(self, user_ids: Iterable[int]) -> None:
        """Another process stored messages for these users: read and push them soon."""
        added = False
        for user_id in user_ids:
            feed = self._feeds.get(user_id)
            if feed is not None:
                feed.pulling = True
                self._signalled.add(user_id)
                added = True
        if added and (self._signal_task is None or self._signal_task.done()):
            self._signal_task = asyncio.get_running_loop().create_task(
                self._drain_signals(), name="nexo-ws-signals"
            )

    def signal_everyone(self) -> None:
        """After a broker reconnect: a signal may have been missed, so look for every user."""
        self.signal(list(self._feeds))

    async def _drain_signals(self) -> None:
        while self._signalled:
            users, self._signalled = self._signalled, set()
            for user_id in users:
                feed = self._feeds.get(user_id)
                if feed is None:
                    continue
                try:
                    await self._pull(feed)
                except Exception:
                    log.exception("reading new messages for user %s after a signal failed", user_id)
                finally:
                    if user_id not in self._signalled:
                        feed.pulling = False

    async def _pull(self, feed: _Feed) -> None:
        """Push every row of the user after its cursor that this process did not push yet."""
        while True:
            feed.deferred = False
            rows = await messages.list_received(feed.user_id, feed.cursor, SIGNAL_PAGE)
            if self._feeds.get(feed.user_id) is not feed:
                return  # every connection closed meanwhile
            for row in rows:
                # At or below the cursor (a sweep moved it meanwhile) or pushed directly: done.
                if row.seq > feed.cursor and row.seq not in feed.pushed:
                    for conn in feed.conns:
                        conn.push(row)
            if rows:
                feed.advance(rows[-1].seq)
            if len(rows) < SIGNAL_PAGE and not feed.deferred:
                return

    async def _sweep_once(self) -> None:
        try:
            with SWEEP_SECONDS.time():
                await self.sweep()
        except Exception as exc:  # the next period tries again
            log.error("push sweep failed: %r", exc)

    async def sweep(self) -> None:
        """Catch up every connected user with a stored message this process has not pushed.

        Users whose cursor is at the last sweep's mark are checked against the rows
        committed since (one range read of the primary key, when there are fewer of
        them than users); the others, or everyone after a busy period, by one
        ``COUNT`` per user after its cursor (:data:`SWEEP_BATCH` users a query). A
        user found with nothing unpushed moves its cursor to the newest seq, so an
        idle hub costs one ``MAX(id)`` and one empty range read per period.
        """
        feeds = self._feeds
        if not feeds:
            self._mark = None
            return
        top = await messages.max_seq()  # every seq <= top is committed (commit order)
        self.saw(top)
        mark = self._mark
        window = mark is not None and top - mark <= max(len(feeds), SWEEP_WINDOW)
        windowed: list[_Feed] = []
        probed: list[_Feed] = []
        for feed in list(feeds.values()):
            (windowed if window and mark is not None and feed.cursor >= mark else probed).append(feed)
        lagging: set[int] = set()
        if windowed and mark is not None and top > mark:
            SWEEPS.inc()
            for seq, recipient_id in await messages.recipients_between(mark, top):
                found = feeds.get(recipient_id)
                if found is not None and seq > found.cursor and seq not in found.pushed:
                    lagging.add(recipient_id)
        for feed in windowed:
            if feed.user_id not in lagging:
                feed.advance(top)
        for start in range(0, len(probed), SWEEP_BATCH):
            chunk = {feed.user_id: feed.cursor for feed in probed[start : start + SWEEP_BATCH]}
            SWEEPS.inc()
            counts = await messages.received_after(chunk)
            for user_id, cursor in chunk.items():
                current = feeds.get(user_id)
                if current is None or current.cursor != cursor:
                    continue  # gone, or read meanwhile (the next sweep starts from its new cursor)
                count, newest = counts.get(user_id, (0, 0))
                if count == 0 or sum(1 for seq in current.pushed if seq <= newest) == count:
                    current.advance(max(top, newest))  # all of them pushed already
                else:
                    lagging.add(user_id)
        self._mark = top
        if lagging:
            SWEEP_CATCH_UPS.inc(len(lagging))
            log.info("push sweep: %d users had stored messages not pushed here", len(lagging))
            self.signal(lagging)  # a user already being read is read once more

    def connections_of(self, user_id: int) -> int:
        feed = self._feeds.get(user_id)
        return len(feed.conns) if feed is not None else 0

    def saw(self, seq: int) -> None:
        """A message with this seq is committed: new connections are pushed what follows."""
        if seq > self.seq_hint:
            self.seq_hint = seq

    def end_sessions(self, user_id: int | None, session_id: str | None, reason: str) -> int:
        """Close with 4401, at once, this process's connections of a session (or of every
        session of ``user_id`` when ``session_id`` is None); how many."""
        if user_id is not None:
            feed = self._feeds.get(user_id)
            conns = list(feed.conns) if feed is not None else []
        else:
            conns = self.connections()
        ended = [c for c in conns if not c.ended and (session_id is None or c.session_id == session_id)]
        for conn in ended:
            conn.close_unauthorized(reason)
        return len(ended)

    async def close_all(self, code: int, reason: str) -> None:
        await asyncio.gather(*(conn.close(code, reason) for conn in self.connections()))

    async def start_hint(self) -> None:
        """Read the newest seq now and, when other processes share the database, every
        :data:`HINT_SECONDS` (they commit messages this process does not see)."""
        self.saw(await messages.max_seq())
        if self.sweep_seconds is not None:
            self._hint_task = repeat(HINT_SECONDS, self._read_hint, "nexo-ws-hint")

    async def _read_hint(self) -> None:
        try:
            self.saw(await messages.max_seq())
        except Exception as exc:  # the database is away: the hint only lags
            log.warning("reading the newest seq failed: %r", exc)

    async def stop(self) -> None:
        await cancel_and_wait(self._hint_task)
        await cancel_and_wait(self._sweep_task)
        await cancel_and_wait(self._signal_task)


def on_commit(hub: Hub, publish: Callable[[set[int]], Gate | None]) -> CommitListener:
    """The writer's commit listener: push locally, then signal other processes.

    Returns the signal's publication: the writer acks the batch only once it is
    done, so an ack never reaches a sender before the signal that lets other
    processes push the message.
    """

    def listener(deliveries: list[Delivery], resent: set[int]) -> Gate | None:
        if deliveries:
            hub.saw(max(d.seq for d in deliveries))
        if resent:
            hub.resent(resent)  # first: this batch's pushes to them wait for the read
        hub.deliver(deliveries)
        return publish({d.recipient_id for d in deliveries} | resent)

    return listener
