"""Push cursors, and the sweep that finds messages whose push signal was lost.

A :class:`Feed` is one user's connections in this process and its push cursor:
every message for the user up to the cursor is known pushed here. With several
processes, a :class:`Sweep` runs every ``NEXO_WS_PUSH_SWEEP_SECONDS`` and finds
the connected users with a stored message this process never pushed (its
instance died between commit and signal, the broker dropped the signal); the
hub then reads and pushes their rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import Counter, Histogram

from nexo.messages import service as messages
from nexo.realtime.connection import Connection

log = logging.getLogger("nexo.realtime")

SWEEPS = Counter("nexo_ws_push_sweeps_total", "Sweep queries looking for messages whose push signal was lost")
SWEEP_SECONDS = Histogram(
    "nexo_ws_push_sweep_seconds",
    "Time of one sweep over every connected user of a worker",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
SWEEP_CATCH_UPS = Counter(
    "nexo_ws_push_sweep_catch_ups_total", "Users a sweep found with stored messages not pushed (lost signals)"
)

#: Connected users per sweep query.
SWEEP_BATCH = 5000
#: A sweep reads the rows committed since the last one when there are at most this many
#: (or at most as many as connected users); else it counts per user.
SWEEP_WINDOW = 2000


class Feed:
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


class Sweep:
    """The sweep over every connected user of this process (:meth:`run`)."""

    def __init__(
        self,
        feeds: dict[int, Feed],
        saw: Callable[[int], None],
        signal: Callable[[Iterable[int]], None],
    ) -> None:
        self._feeds = feeds
        #: Told the newest committed seq each sweep reads.
        self._saw = saw
        #: Told the users found with stored messages not pushed here (a catch-up read).
        self._signal = signal
        #: The newest seq the last sweep saw; users at it need only rows after it checked.
        self.mark: int | None = None

    async def run_once(self) -> None:
        """One period's sweep: timed, and a failure logged (the next period tries again)."""
        try:
            with SWEEP_SECONDS.time():
                await self.run()
        except Exception as exc:  # the next period tries again
            log.error("push sweep failed: %r", exc)

    async def run(self) -> None:
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
            self.mark = None
            return
        top = await messages.max_seq()  # every seq <= top is committed (commit order)
        self._saw(top)
        mark = self.mark
        window = mark is not None and top - mark <= max(len(feeds), SWEEP_WINDOW)
        windowed: list[Feed] = []
        probed: list[Feed] = []
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
        self.mark = top
        if lagging:
            SWEEP_CATCH_UPS.inc(len(lagging))
            log.info("push sweep: %d users had stored messages not pushed here", len(lagging))
            self._signal(lagging)  # a user already being read is read once more
