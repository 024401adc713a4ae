"""SQLite WAL checkpoints (copying the WAL back into the database file: SQLite's
"backfill") off the write path; "checkpoint" elsewhere in Nexo is the C2SP note.

With SQLite's default (``wal_autocheckpoint=1000``) the connection whose
commit pushes the WAL past 1,000 pages copies the WAL back into the database
file and syncs it, inside that commit. In the server that connection is the
one every message, registration and STH goes through, so every few thousand
messages one group commit took 10-20 ms instead of 0.5 ms, and every
message in flight waited for it (the p99 of the messaging benchmark, docs/BENCHMARKS.md).

The server turns automatic checkpoints off on its connection and runs this
backfiller instead: a thread with its own connection that makes a PASSIVE
checkpoint every :data:`INTERVAL_SECONDS`. A passive checkpoint never takes
the write lock, so commits go on while it copies and syncs. When it has
copied everything and no commit came in meanwhile, the next commit starts
the WAL over from the beginning. Under sustained writes that moment never
comes, so once the WAL holds more than :data:`RESTART_BYTES` a RESTART
checkpoint copies the frames the last passive pass left, holding commits back
meanwhile, and makes the next commit start the WAL over. The hold is mostly
syncing the pages it copies (15-30 us each on the project's disk), so passive
passes catch up first, until one copies little; and in the server the RESTART
runs on the writer's own connection (``restart_via``), queued behind the
commit in progress like any other statement, so neither waits for the other
in SQLite's busy handler (which sleeps 1, 2, 5, 10 ms... and overshoots).
Under full load a restart still holds commits about 20 ms, hence a large
:data:`RESTART_BYTES`: the WAL file stays near that size instead of growing
without bound. Durability is unchanged: a commit is in the WAL
(``synchronous=NORMAL``) before its ack either way, and SQLite's recovery
reads the WAL after a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("nexo.db")

INTERVAL_SECONDS = 0.25
#: WAL size above which a checkpoint briefly holds the writer back to restart the WAL
#: (as many pages as fit, by the database's page size). The same as the WAL size kept
#: after a restart (``journal_size_limit`` in nexo/platform/db.py). Each restart holds commits back
#: for the pages it copies and syncs (about 20 ms under full load on the project's disk),
#: so the larger, the rarer: at 16 MiB (1 KiB pages) one came every 5,000 messages or so
#: under full load, and the hundred or so messages in flight waited for it.
RESTART_BYTES = 64 * 2**20
#: Before a RESTART, passive passes go on while the last one copied at least this many pages...
CATCH_UP_PAGES = 256
#: ... but no more passes than this.
CATCH_UP_PASSES = 4

#: The metric names keep SQLite's word (``PRAGMA wal_checkpoint``): dashboards rely on them.
BACKFILLS = Counter(
    "nexo_sqlite_checkpoints_total", "WAL checkpoints made by the backfiller, by mode", ["mode"]
)
BACKFILL_SECONDS = Histogram(
    "nexo_sqlite_checkpoint_seconds",
    "Time of one WAL checkpoint, by mode (a restart holds commits back for up to this long)",
    ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
WAL_PAGES = Gauge(
    "nexo_sqlite_wal_pages", "Pages in the SQLite WAL at the last checkpoint", multiprocess_mode="max"
)


#: ``PRAGMA wal_checkpoint`` run elsewhere: its row (busy, pages in the WAL, pages copied).
BackfillRow = tuple[int, int, int]


class WriterConnection:
    """Runs a checkpoint on the writer's connection, which lives on an event loop.

    ``run`` is a coroutine function executing ``PRAGMA wal_checkpoint(<mode>)``
    there; the backfiller thread submits it to ``loop`` and waits.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, run: Callable[[str], Coroutine[Any, Any, BackfillRow]]
    ) -> None:
        self.loop = loop
        self.run = run

    def backfill(self, mode: str, stop: threading.Event) -> BackfillRow:
        try:
            future = asyncio.run_coroutine_threadsafe(self.run(mode), self.loop)
        except RuntimeError as exc:  # the loop is closed: the server is gone
            raise sqlite3.OperationalError(str(exc)) from exc
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if stop.is_set():  # the loop may be busy stopping the server: do not wait for it
                    future.cancel()
                    raise sqlite3.OperationalError("server stopping") from None


class WalBackfiller:
    """A daemon thread checkpointing ``path``'s WAL every ``interval`` seconds.

    ``restart_pages`` defaults to :data:`RESTART_BYTES` in pages of the database.
    With ``restart_via``, RESTART checkpoints run on that (the writer's) connection.
    """

    def __init__(
        self,
        path: Path,
        interval: float = INTERVAL_SECONDS,
        restart_pages: int | None = None,
        restart_via: WriterConnection | None = None,
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_pages = restart_pages
        self.restart_via = restart_via
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nexo-wal-backfill", daemon=True)

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
            log.error("WAL backfiller could not open %s: %s; SQLite will not checkpoint", self.path, exc)
            return
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            restart_pages = self.restart_pages or RESTART_BYTES // page_size
            while not self._stop.wait(self.interval):
                pages = self.backfill(conn, "PASSIVE")
                if pages > restart_pages:
                    self._restart(conn, pages)
            # At shutdown the writers are done: copy everything back and empty the WAL.
            self.backfill(conn, "TRUNCATE")
        finally:
            conn.close()

    def _restart(self, conn: sqlite3.Connection, pages: int) -> None:
        """Catch up with passive passes, then RESTART (which holds the writer back meanwhile).

        Each passive pass copies what came in during the one before, until one copies less
        than :data:`CATCH_UP_PAGES`: the RESTART's hold is about syncing what is left.
        """
        for _ in range(CATCH_UP_PASSES):
            before, pages = pages, self.backfill(conn, "PASSIVE")
            if pages - before < CATCH_UP_PAGES:
                break
        self.backfill(conn, "RESTART", self._restart_on_writer)

    def _restart_on_writer(self, conn: sqlite3.Connection, mode: str) -> BackfillRow:
        if self.restart_via is None:
            return _backfill_row(conn, mode)
        return self.restart_via.backfill(mode, self._stop)

    @staticmethod
    def backfill(
        conn: sqlite3.Connection,
        mode: str,
        run: Callable[[sqlite3.Connection, str], BackfillRow] | None = None,
    ) -> int:
        """One checkpoint (by ``run``, default on ``conn``).

        Returns the pages in the WAL when it ran (0 if it failed).
        """
        started = time.perf_counter()
        try:
            busy, pages, copied = (run or _backfill_row)(conn, mode)
        except sqlite3.Error as exc:  # a locked or busy database: try again next time
            log.warning("WAL checkpoint (%s) failed: %s", mode, exc)
            return 0
        BACKFILL_SECONDS.labels(mode.lower()).observe(time.perf_counter() - started)
        BACKFILLS.labels(mode.lower()).inc()
        pages = max(pages, 0)  # -1 when the database is not in WAL mode
        WAL_PAGES.set(pages)
        if busy:
            log.debug("WAL checkpoint (%s) could not finish: %d of %d pages copied", mode, copied, pages)
        return pages


def _backfill_row(conn: sqlite3.Connection, mode: str) -> BackfillRow:
    busy, pages, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    return busy, pages, copied
