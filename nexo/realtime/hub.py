"""This process's registry of open WebSocket connections, and push to them.

A ``connection.Connection`` owns one socket's outgoing side (its outbox);
``feeds.py`` holds each user's push cursor and the sweep. Only the reader loop
(``ws.py``) reads the socket.

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
import logging
from collections.abc import Callable, Iterable

from prometheus_client import Gauge

from nexo.messages import service as messages
from nexo.messages.service import CommitListener, Delivery, Gate
from nexo.platform.tasks import cancel_and_wait, repeat
from nexo.realtime.connection import Connection
from nexo.realtime.feeds import Feed, Sweep

log = logging.getLogger("nexo.realtime")

OPEN_CONNECTIONS = Gauge(
    "nexo_ws_open_connections", "Open authenticated WebSocket connections", multiprocess_mode="livesum"
)

#: How often a process with peers re-reads the newest seq (``Hub.seq_hint``); a socket
#: that upgrades may be pushed messages committed up to this long before its handshake.
HINT_SECONDS = 0.25
#: Rows read per query when a signal says a user has new messages.
SIGNAL_PAGE = 500
#: Direct pushes tracked above a user's cursor before a read moves the cursor past them.
MAX_UNSWEPT = 8192


class Hub:
    """Connections of this process by user id.

    With ``sweep_seconds`` (several processes share the database): every pushed
    seq is tracked per user, a duplicate resend or a signal reads the user's rows
    after its cursor, and a sweep every ``sweep_seconds`` counts, in one query per
    :data:`feeds.SWEEP_BATCH` connected users, the rows each received after its cursor;
    a user with a row this process never pushed gets a catch-up read. A message
    whose signal was lost (its instance died between commit and signal, the
    broker dropped it) is thus pushed within one period plus one read.
    """

    def __init__(self, sweep_seconds: float | None = None) -> None:
        self._feeds: dict[int, Feed] = {}
        self._signalled: set[int] = set()
        self._signal_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self.sweep_seconds = sweep_seconds
        self._sweep = Sweep(self._feeds, self.saw, self.signal)
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
            self._sweep_task = repeat(self.sweep_seconds, self._sweep.run_once, "nexo-ws-sweep")

    async def add(self, conn: Connection, since: int) -> None:
        """Register ``conn`` for pushes and push what its user received after ``since``
        (the newest seq before its handshake; earlier messages come by ``sync``)."""
        feed = self._feeds.get(conn.user_id)
        if feed is None:
            # Signals and sweeps for this user read rows after this seq.
            feed = self._feeds[conn.user_id] = Feed(conn.user_id, since)
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

    async def _pull(self, feed: Feed) -> None:
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
