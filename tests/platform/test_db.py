"""Database wiring on the real SQLite file: the runbook's pragmas are in force."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexo.platform import db
from nexo.platform.config import Settings
from nexo.platform.wal import BACKFILLS, BackfillRow, WalBackfiller, WriterConnection
from tests.conftest import ServerFactory

pytestmark = pytest.mark.server


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
    assert int(pragmas["page_size"]) == db.SQLITE_PAGE_SIZE == 1024
    assert int(pragmas["journal_size_limit"]) == 64 * 2**20
    assert settings.sqlite_path.exists()


async def test_an_existing_database_keeps_its_page_size(tmp_path: Path) -> None:
    settings = Settings(jwt_secret="x" * 32, data_dir=tmp_path)
    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(settings.sqlite_path)
    old.execute("PRAGMA page_size = 4096")
    old.execute("CREATE TABLE made_earlier (id INTEGER PRIMARY KEY)")
    old.close()
    await db.init_db(settings)
    try:
        pragmas = await db.read_pragmas()
        await db.connection().execute_query("SELECT COUNT(*) FROM made_earlier")
    finally:
        await db.close_db()
    assert int(pragmas["page_size"]) == 4096
    assert str(pragmas["journal_mode"]).lower() == "wal"


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def _wal_writer(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection writing as the server's does: WAL, no automatic checkpoints."""
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, blob BLOB)")
    return writer


def _assert_all_rows_in_the_database_file(path: Path, rows: int) -> None:
    """After the last checkpoint at stop the WAL is empty; every row is in the database file."""
    assert _wal_bytes(path) == 0
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT COUNT(*) FROM t").fetchone()[0] == rows
    reader.close()


def test_wal_backfiller_keeps_the_wal_small_under_sustained_writes(tmp_path: Path) -> None:
    path = tmp_path / "nexo.db"
    writer = _wal_writer(path, busy_timeout_ms=5000)
    backfiller = WalBackfiller(path, interval=0.02, restart_pages=256)
    passive, restart = BACKFILLS.labels("passive"), BACKFILLS.labels("restart")
    before = passive._value.get(), restart._value.get()
    backfiller.start()
    rows, largest = 0, 0
    try:
        # 64 MiB of commits, one after another with the short gaps of a server's writer
        # (which returns to its event loop between two group commits): a passive
        # checkpoint never sees the WAL fully copied between two commits, so without
        # restarts the WAL would hold it all (checked: 72 MB).
        while rows < 800:
            writer.execute("INSERT INTO t (blob) VALUES (?)", (os.urandom(80_000),))
            rows += 1
            largest = max(largest, _wal_bytes(path))
            time.sleep(0.0005)
        assert largest < 16 * 2**20, largest
        assert passive._value.get() > before[0]
        assert restart._value.get() > before[1]
    finally:
        backfiller.stop()
    writer.close()
    _assert_all_rows_in_the_database_file(path, 800)


async def test_restarts_made_on_the_writers_connection_never_lock_the_writer_out(tmp_path: Path) -> None:
    # The server's way (restart_via): the RESTART runs on the writer's connection, between
    # two of its commits, on its event loop. The writer has no busy timeout here, so a
    # commit that ever had to wait for the backfiller would fail with "database is
    # locked" (as it does when the backfiller makes the RESTART on its own connection).
    path = tmp_path / "nexo.db"
    writer = _wal_writer(path, busy_timeout_ms=0)

    async def on_writer(mode: str) -> BackfillRow:
        busy, pages, copied = writer.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return busy, pages, copied

    via = WriterConnection(asyncio.get_running_loop(), on_writer)
    backfiller = WalBackfiller(path, interval=0.02, restart_pages=256, restart_via=via)
    restart = BACKFILLS.labels("restart")
    before = restart._value.get()
    backfiller.start()
    largest = 0
    try:
        for _ in range(800):
            writer.execute("INSERT INTO t (blob) VALUES (?)", (os.urandom(80_000),))
            largest = max(largest, _wal_bytes(path))
            await asyncio.sleep(0.0005)  # the writer's loop turns between two commits
        assert largest < 16 * 2**20, largest
        assert restart._value.get() > before
    finally:
        backfiller.stop()  # while the loop is blocked: the thread must not wait for it
    writer.close()
    _assert_all_rows_in_the_database_file(path, 800)


def test_the_server_checkpoints_its_sqlite_wal(make_server: ServerFactory) -> None:
    server = make_server({"DATABASE_URL": ""})  # SQLite in either test run
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        counts = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "nexo_sqlite_checkpoints_total" and sample.labels["mode"] == "passive"
        ]
        if counts and counts[0] >= 2:
            return
        time.sleep(0.2)
    raise AssertionError(f"no WAL checkpoints reported in 10 s: {counts}")


async def test_quick_reader_sees_each_commit_at_once(tmp_path: Path) -> None:
    settings = Settings(jwt_secret="x" * 32, data_dir=tmp_path)
    await db.init_db(settings)
    db.open_quick_reader(settings)
    try:
        reader = db.quick_reader()
        assert reader is not None
        await db.connection().execute_query("INSERT INTO counters (name, value) VALUES ('probe', 1)")
        query = "SELECT value FROM counters WHERE name = ?"
        assert reader.fetch(query, ("probe",)) == [(1,)]
        await db.connection().execute_query("UPDATE counters SET value = 2 WHERE name = 'probe'")
        assert reader.fetch(query, ("probe",)) == [(2,)]  # the next read sees the commit
        with pytest.raises(sqlite3.OperationalError):  # read-only: a write is refused, not made
            reader._conn.execute("DELETE FROM counters")
        assert reader.fetch(query, ("probe",)) == [(2,)]
    finally:
        db.close_quick_reader()
        await db.close_db()
    assert db.quick_reader() is None


def test_quick_reader_answers_none_at_once_when_it_cannot_read(tmp_path: Path) -> None:
    """Never a wait on the event loop: a locked database means "take the normal path"."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    reader = db.QuickReader(path)
    try:
        started = time.perf_counter()
        assert reader.fetch("SELECT x FROM t", ()) is None
        assert time.perf_counter() - started < 0.5
        holder.execute("COMMIT")
        holder.close()
        assert reader.fetch("SELECT x FROM t", ()) == [(1,)]
    finally:
        reader.close()
