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
the write lock, so commits go on while it copies and syncs; once it has
copied everything, the next commit starts the WAL over from the beginning,
so the WAL stays a few megabytes. Durability is unchanged: a commit is in
the WAL (``synchronous=NORMAL``) before its ack either way, and SQLite's
recovery reads the WAL after a crash.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from prometheus_client import Counter, Gauge

log = logging.getLogger("nexo.db")

INTERVAL_SECONDS = 1.0

CHECKPOINTS = Counter("nexo_sqlite_checkpoints_total", "Passive WAL checkpoints made by the checkpointer")
WAL_PAGES = Gauge(
    "nexo_sqlite_wal_pages", "Pages in the SQLite WAL at the last checkpoint", multiprocess_mode="max"
)


class Checkpointer:
    """A daemon thread checkpointing ``path``'s WAL every ``interval`` seconds."""

    def __init__(self, path: Path, interval: float = INTERVAL_SECONDS) -> None:
        self.path = path
        self.interval = interval
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
                self.checkpoint(conn, "PASSIVE")
            # At shutdown the writers are done: copy everything back and empty the WAL.
            self.checkpoint(conn, "TRUNCATE")
        finally:
            conn.close()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection, mode: str) -> None:
        try:
            busy, pages, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:  # a locked or busy database: try again next time
            log.warning("WAL checkpoint (%s) failed: %s", mode, exc)
            return
        CHECKPOINTS.inc()
        WAL_PAGES.set(max(pages, 0))
        if busy:
            log.debug("WAL checkpoint (%s) could not finish: %d of %d pages copied", mode, copied, pages)
