"""The state directory: private keys (0600 file) and one SQLite database (0600).

``identity.json``: the device's Ed25519 and X25519 private keys (raw, base64).
``client.db``: the account and session, the device ids, the pinned log key, the
last verified tree head, the outbox, the handled seqs and the sync cursor.
Everything the client must not lose survives a restart; every change the
client makes after a verification is one committed transaction.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    queued_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS handled (seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (message_id TEXT PRIMARY KEY);
"""


@dataclass(frozen=True)
class OutboxItem:
    message_id: str
    recipient: str
    body: str


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing; refuse one others can read."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise StateError(f"{path} is readable by others (mode {oct(mode)}); chmod 600 it")


class Store:
    """The state directory of one account on one server."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.identity_path = self.dir / "identity.json"
        db_path = self.dir / "client.db"
        _private_file(db_path)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in tx()).
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a crash or kill -9 of the client; only queue() pays an fsync
        # (synchronous=FULL for its commit) so a queued message also survives a power cut. A
        # lost ack deletion or handled mark after a power cut means a resend (deduplicated by
        # the server) or the message handed again.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: all of it commits or none."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- key/value --------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any, conn: sqlite3.Connection | None = None) -> None:
        sql = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
        (conn or self.db).execute(sql, (key, json.dumps(value, sort_keys=True)))

    def delete(self, key: str) -> None:
        self.db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def snapshot(self) -> dict[str, Any]:
        """Every stored value and queued message (tests compare it before and after an attack)."""
        return {
            "kv": dict(self.db.execute("SELECT key, value FROM kv ORDER BY key").fetchall()),
            "outbox": self.db.execute("SELECT message_id, body FROM outbox ORDER BY message_id").fetchall(),
            "handled": self.db.execute("SELECT seq FROM handled ORDER BY seq").fetchall(),
        }

    # -- identity file ----------------------------------------------------------------------

    def load_identity(self) -> dict[str, str] | None:
        if not self.identity_path.exists():
            return None
        mode = stat.S_IMODE(self.identity_path.stat().st_mode)
        if mode & 0o077:
            raise StateError(f"{self.identity_path} is readable by others (mode {oct(mode)}); chmod 600 it")
        data: dict[str, str] = json.loads(self.identity_path.read_text())
        return data

    def save_identity(self, keys: dict[str, str]) -> None:
        tmp = self.identity_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(keys, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.identity_path)

    # -- outbox -----------------------------------------------------------------------------

    def queue(self, item: OutboxItem) -> None:
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with self.tx() as conn:
                conn.execute(
                    "INSERT INTO outbox (message_id, recipient, body, queued_at) VALUES (?, ?, ?, ?)",
                    (item.message_id, item.recipient, item.body, time.time()),
                )
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def pending(self) -> list[OutboxItem]:
        rows = self.db.execute("SELECT message_id, recipient, body FROM outbox ORDER BY queued_at, rowid")
        return [OutboxItem(*row) for row in rows]

    def is_pending(self, message_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM outbox WHERE message_id = ?", (message_id,)).fetchone()
        return row is not None

    def acked(self, message_id: str) -> None:
        self.db.execute("DELETE FROM outbox WHERE message_id = ?", (message_id,))

    # -- inbox ------------------------------------------------------------------------------

    def cursor(self) -> int:
        return int(self.get("cursor") or 0)

    def was_handled(self, seq: int, message_id: str) -> bool:
        """This seq, or this message_id under any seq (a server replaying a message), was handled."""
        row = self.db.execute(
            "SELECT 1 FROM handled WHERE seq = ? UNION ALL SELECT 1 FROM seen WHERE message_id = ?",
            (seq, message_id),
        ).fetchone()
        return row is not None

    def mark_handled(self, seq: int, message_id: str) -> None:
        """Record ``seq`` and ``message_id`` as handed to the application (never again).

        Seqs at or below the cursor are pruned; message ids are kept (about 60 bytes each).
        """
        with self.tx() as conn:
            conn.execute("INSERT OR IGNORE INTO handled (seq, message_id) VALUES (?, ?)", (seq, message_id))
            conn.execute("INSERT OR IGNORE INTO seen (message_id) VALUES (?)", (message_id,))

    def advance_cursor(self, upto: int) -> None:
        """A ``sync`` up to ``upto`` was fully processed: the next one starts there.

        Handled seqs at or below the cursor can never be replayed again, so they are dropped.
        """
        with self.tx() as conn:
            if upto > self.cursor():
                self.put("cursor", upto, conn)
                conn.execute("DELETE FROM handled WHERE seq <= ?", (upto,))
