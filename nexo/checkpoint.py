"""SQLite WAL checkpoints off the write path.

With SQLite's default (``wal_autocheckpoint=1000``) the connection whose
commit pushes the WAL past 1,000 pages copies the WAL back into the database
file and syncs it, inside that commit. In the server that connection is the
one every message, registration and STH goes through, so every few thousand
messages one group commit took 10-20 ms instead of 0.5 ms, and every
message in flight waited for it (the p99 of issue 4's benchmark).

The server turns automatic checkpoints off on its connection and runs this
checkpointer instead: a thread with its own connection that makes a PASSIVE
checkpoint every :data:`INTERVAL_SECONDS`. A passive checkpoint never takes
the write lock, so commits go on while it copies and syncs. When it has
copied everything and no commit came in meanwhile, the next commit starts
the WAL over from the beginning. Under sustained writes that moment never
comes, so once the WAL holds more than :data:`RESTART_PAGES` pages the
checkpointer makes a RESTART checkpoint: it waits for the commit in progress,
holds new ones back while it copies the few frames the last passive pass
left (a few milliseconds) and makes the next commit start the WAL over (it
gets in between two commits: the server's writer returns to its event loop
after each; if none came within the busy timeout it would try again on the
next pass). The WAL file so stays near ``RESTART_PAGES`` pages instead of
growing without bound. Durability is unchanged: a commit is in the WAL
(``synchronous=NORMAL``) before its ack either way, and SQLite's recovery
reads the WAL after a crash.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("nexo.db")

INTERVAL_SECONDS = 0.25
#: WAL size (pages) above which a checkpoint briefly holds writers back to restart the WAL.
RESTART_PAGES = 16384

CHECKPOINTS = Counter(
    "nexo_sqlite_checkpoints_total", "WAL checkpoints made by the checkpointer, by mode", ["mode"]
)
CHECKPOINT_SECONDS = Histogram(
    "nexo_sqlite_checkpoint_seconds",
    "Time of one WAL checkpoint, by mode (a restart holds commits back for up to this long)",
    ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
WAL_PAGES = Gauge(
    "nexo_sqlite_wal_pages", "Pages in the SQLite WAL at the last checkpoint", multiprocess_mode="max"
)


class Checkpointer:
    """A daemon thread checkpointing ``path``'s WAL every ``interval`` seconds."""

    def __init__(
        self, path: Path, interval: float = INTERVAL_SECONDS, restart_pages: int = RESTART_PAGES
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_pages = restart_pages
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nexo-wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the checkpoint in progress, if any (the last one runs at close)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            log.error("WAL checkpointer could not open %s: %s; SQLite will not checkpoint", self.path, exc)
            return
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            while not self._stop.wait(self.interval):
                if self.checkpoint(conn, "PASSIVE") > self.restart_pages:
                    self.checkpoint(conn, "RESTART")
            # At shutdown the writers are done: copy everything back and empty the WAL.
            self.checkpoint(conn, "TRUNCATE")
        finally:
            conn.close()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection, mode: str) -> int:
        """One checkpoint; returns the pages in the WAL when it ran (0 if it failed)."""
        started = time.perf_counter()
        try:
            busy, pages, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:  # a locked or busy database: try again next time
            log.warning("WAL checkpoint (%s) failed: %s", mode, exc)
            return 0
        CHECKPOINT_SECONDS.labels(mode.lower()).observe(time.perf_counter() - started)
        CHECKPOINTS.labels(mode.lower()).inc()
        pages = max(pages, 0)  # -1 when the database is not in WAL mode
        WAL_PAGES.set(pages)
        if busy:
            log.debug("WAL checkpoint (%s) could not finish: %d of %d pages copied", mode, copied, pages)
        return pages
