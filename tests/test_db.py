"""Database wiring on the real SQLite file: the runbook's pragmas are in force."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nexo import db
from nexo.checkpoint import CHECKPOINTS, Checkpointer
from nexo.config import Settings
from tests.conftest import ServerFactory


async def test_sqlite_pragmas_are_applied(tmp_path: Path) -> None:
    settings = Settings(jwt_secret="x" * 32, data_dir=tmp_path / "fresh" / "data")
    await db.init_db(settings)
    try:
        pragmas = await db.read_pragmas()
    finally:
        await db.close_db()
    assert str(pragmas["journal_mode"]).lower() == "wal"
    assert int(pragmas["synchronous"]) == 1  # NORMAL
    assert int(pragmas["cache_size"]) == -2000
    assert int(pragmas["temp_store"]) == 2  # MEMORY
    assert int(pragmas["busy_timeout"]) == 5000
    assert settings.sqlite_path.exists()


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_checkpointer_keeps_the_wal_small_without_automatic_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "nexo.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")  # as the server's connection
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, blob BLOB)")
    checkpointer = Checkpointer(path, interval=0.05)
    checkpointer.start()
    try:
        before = CHECKPOINTS._value.get()
        sizes = []
        for _round in range(30):
            for _ in range(20):  # about 80 KiB a commit, 1.6 MiB a round
                writer.execute("INSERT INTO t (blob) VALUES (?)", (os.urandom(80_000),))
            sizes.append(_wal_bytes(path))
            time.sleep(0.06)
        # 48 MiB went through the WAL; it was copied back and restarted from the beginning.
        assert max(sizes) < 8 * 2**20, sizes
        assert CHECKPOINTS._value.get() - before >= 10
        assert writer.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 600
    finally:
        checkpointer.stop()
    # The last checkpoint at stop empties the WAL; the rows are in the database file.
    assert _wal_bytes(path) == 0
    writer.close()
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 600
    reader.close()


def test_the_server_checkpoints_its_sqlite_wal(make_server: ServerFactory) -> None:
    server = make_server({"DATABASE_URL": ""})  # SQLite in either test run
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        counts = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "nexo_sqlite_checkpoints_total"
        ]
        if counts and counts[0] >= 2:
            return
        time.sleep(0.2)
    raise AssertionError(f"no WAL checkpoints reported in 10 s: {counts}")
