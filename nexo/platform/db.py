"""Database wiring: Tortoise config from DATABASE_URL or the SQLite default.

SQLite (the zero-config default) lives at ``$NEXO_DATA_DIR/nexo.db`` with the
runbook's pragmas; PostgreSQL is used when ``DATABASE_URL`` is set.

Tortoise 1.x keeps its state in a context variable that Sanic does not carry
into request tasks, so :func:`init_db` always enables the global fallback
(without it a request handler finds no connection); ``tests/platform/test_db.py`` proves
handlers see it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse, urlunparse

import asyncpg
from tortoise import Tortoise, connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import BaseORMException

from nexo.platform import filemodes, ids
from nexo.platform.config import Settings

log = logging.getLogger("nexo.db")

#: Modules holding Tortoise models, one per feature.
MODEL_MODULES = [
    "nexo.platform.counters",
    "nexo.auth.models",
    "nexo.devices.models",
    "nexo.messages.models",
    "nexo.transparency.models",
]

#: The runbook's "SQLite Optimization" pragmas, plus a busy timeout (ms) and a WAL size
#: kept after a checkpoint restarts it (Tortoise's default, 16 KiB, made the WAL file shrink
#: and grow again at every restart). Checkpoints themselves: ``nexo/platform/wal.py``.
SQLITE_PRAGMAS: dict[str, str | int] = {
    "journal_mode": "WAL",
    "synchronous": "NORMAL",
    "cache_size": -2000,
    "temp_store": "MEMORY",
    "busy_timeout": 5000,
    "foreign_keys": "ON",
    "journal_size_limit": 64 * 2**20,
}
#: Page size of a new SQLite database. A message touches a random page of the
#: ``message_id`` index and one of the sender index, and each touched page goes to the WAL
#: whole: 1 KiB pages cut the WAL and checkpoint traffic about threefold against 4 KiB.
SQLITE_PAGE_SIZE = 1024

#: Bumped whenever the schema changes; recorded by ``nexo db push``.
SCHEMA_VERSION = 1


def db_url(settings: Settings) -> str:
    """The Tortoise connection URL for these settings."""
    if settings.database_url:
        parsed = urlparse(settings.database_url)
        scheme = "asyncpg" if parsed.scheme in {"postgres", "postgresql"} else parsed.scheme
        return urlunparse(parsed._replace(scheme=scheme))
    path = settings.sqlite_path.resolve()
    return f"sqlite://{path}?{urlencode(SQLITE_PRAGMAS)}"


def tortoise_config(settings: Settings) -> dict[str, Any]:
    return {
        "connections": {"default": db_url(settings)},
        "apps": {"nexo": {"models": MODEL_MODULES, "default_connection": "default"}},
        "use_tz": True,
        "timezone": "UTC",
    }


async def init_db(settings: Settings, *, create_schema: bool = True) -> None:
    """Open the connection (creating the SQLite file and its directory if needed)."""
    if settings.database_kind == "sqlite":
        create_sqlite_file(settings.sqlite_path)
    await Tortoise.init(config=tortoise_config(settings), _enable_global_fallback=True)
    if create_schema:
        await push_schema()


def create_sqlite_file(path: Path) -> None:
    """Create the database file (and its directory) with :data:`SQLITE_PAGE_SIZE` pages if it
    does not exist yet. An existing database keeps the page size it was made with."""
    filemodes.private_dir(path.parent)
    if path.exists() and path.stat().st_size > 0:
        return
    # 0600 first: SQLite gives the WAL and SHM files the database file's mode.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, filemodes.FILE_MODE))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # The page size is fixed when the first page is written; WAL mode writes it.
        conn.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


async def close_db() -> None:
    await Tortoise.close_connections()


class QuickReader:
    """Point reads on SQLite in the calling (event-loop) thread, without Tortoise.

    A query through Tortoise and aiosqlite hops to aiosqlite's thread and back:
    about 50-80 µs of CPU, against 2-10 µs for an indexed lookup run in place.
    The check "is this session live?" runs on every authenticated request, so it
    uses this reader. Its own connection is read-only (``query_only``) with no
    busy timeout: in WAL mode a reader never waits for the writer, and in the
    rare case it cannot read at once (WAL recovery, an exclusive lock) it
    answers ``None`` and the caller takes the normal path, so the event loop is
    never blocked waiting for a lock.
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout = 0")
        self._conn.execute("PRAGMA query_only = ON")

    def fetch(self, query: str, params: Sequence[Any]) -> list[Any] | None:
        """The rows, or ``None`` when the database cannot be read at once."""
        try:
            return self._conn.execute(query, params).fetchall()
        except sqlite3.OperationalError:
            return None

    def close(self) -> None:
        self._conn.close()


_quick_reader: QuickReader | None = None


def open_quick_reader(settings: Settings) -> None:
    """Open the process's :class:`QuickReader` (SQLite only; a server worker calls this)."""
    global _quick_reader
    close_quick_reader()
    if settings.database_kind == "sqlite":
        _quick_reader = QuickReader(settings.sqlite_path)


def close_quick_reader() -> None:
    global _quick_reader
    if _quick_reader is not None:
        _quick_reader.close()
        _quick_reader = None


def quick_reader() -> QuickReader | None:
    """The open :class:`QuickReader`, or ``None`` (PostgreSQL, CLI commands, tests)."""
    return _quick_reader


def connection() -> BaseDBAsyncClient:
    """The default connection, for repositories that write raw SQL on a hot path."""
    return connections.get("default")


async def backfill_wal(mode: str) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(<mode>)`` on the server's own (writer's) SQLite connection.

    Queued behind the statement in progress like any other, so it never waits
    for this process's writer in SQLite's busy handler (nexo/platform/wal.py).
    """
    try:
        _, rows = await connection().execute_query(f"PRAGMA wal_checkpoint({mode})")
    except BaseORMException as exc:
        raise sqlite3.OperationalError(str(exc)) from exc
    busy, pages, copied = rows[0]
    return busy, pages, copied


def unreachable(error: BaseException) -> bool:
    """The database did not answer (as opposed to refusing a statement): retrying parts is futile."""
    # OSError covers ConnectionError and Tortoise's DBConnectionError; PostgresConnectionError
    # covers asyncpg's ConnectionDoesNotExistError and SQLSTATE class 08.
    return isinstance(error, OSError | TimeoutError | asyncpg.PostgresConnectionError)


def dialect() -> str:
    """``sqlite`` or ``postgres``: repositories pick placeholders with it."""
    return connection().capabilities.dialect


_PLACEHOLDER = re.compile(r"\?")


def placeholders(query: str, dialect_name: str | None = None) -> str:
    """The one placeholder style of hand-written SQL: write ``?`` (one per value, in order);
    SQLite runs it as is, PostgreSQL gets ``$1, $2, ...``. Only SQL that exists for
    PostgreSQL alone (``unnest``, advisory locks) writes ``$n`` itself."""
    if (dialect_name or dialect()) != "postgres":
        return query
    return _numbered(query)


@functools.lru_cache(maxsize=512)
def _numbered(query: str) -> str:
    counter = iter(range(1, 1_000_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", query)


def sql_for(query: str, conn: BaseDBAsyncClient) -> str:
    """:func:`placeholders` for the dialect of ``conn`` (a connection or a transaction)."""
    return placeholders(query, conn.capabilities.dialect)


async def read_one_moment(conn: BaseDBAsyncClient) -> None:
    """Make the transaction ``conn`` read every table as of one moment. PostgreSQL needs
    REPEATABLE READ for it; a SQLite transaction in WAL mode reads one snapshot already."""
    if conn.capabilities.dialect == "postgres":
        await conn.execute_script("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


async def empty_tables(conn: BaseDBAsyncClient, tables: Sequence[str]) -> None:
    """Delete every row of ``tables`` (parents before children) inside the transaction ``conn``."""
    if conn.capabilities.dialect == "postgres":
        await conn.execute_script("TRUNCATE " + ", ".join(f'"{table}"' for table in tables))
        return
    await conn.execute_script("PRAGMA defer_foreign_keys = ON")
    for table in reversed(tables):
        await conn.execute_script(f'DELETE FROM "{table}"')


async def insert_rows(
    conn: BaseDBAsyncClient, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` (database values, one per column) as they are: no ORM default or
    ``auto_now`` touches them."""
    if not rows:
        return
    names = ", ".join(f'"{column}"' for column in columns)
    marks = ", ".join("?" * len(columns))
    query = sql_for(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', conn)
    await conn.execute_many(query, [list(row) for row in rows])


async def push_schema() -> int:
    """Create missing tables and indexes; never drop or rewrite existing data.

    Returns the schema version now recorded in the database.
    """
    conn = connection()
    await Tortoise.generate_schemas(safe=True)
    # Also repairs a database imported before exports carried id high-water marks.
    await ids.raise_sequences(conn)
    await conn.execute_script(
        "CREATE TABLE IF NOT EXISTS nexo_schema (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)"
    )
    rows = await conn.execute_query_dict("SELECT version FROM nexo_schema WHERE id = 1")
    if not rows:
        await conn.execute_script(f"INSERT INTO nexo_schema (id, version) VALUES (1, {SCHEMA_VERSION})")
        return SCHEMA_VERSION
    version = int(rows[0]["version"])
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database schema is version {version}, newer than this Nexo ({SCHEMA_VERSION}): "
            "upgrade Nexo before serving it"
        )
    if version < SCHEMA_VERSION:
        await conn.execute_script(f"UPDATE nexo_schema SET version = {SCHEMA_VERSION} WHERE id = 1")
    return SCHEMA_VERSION


async def ping() -> None:
    """Raise if the database does not answer a trivial query."""
    await connection().execute_query("SELECT 1")


async def read_pragmas() -> dict[str, Any]:
    """The SQLite pragmas in force (for tests and ``nexo doctor``)."""
    conn = connection()
    result = {}
    for name in (
        "journal_mode",
        "synchronous",
        "cache_size",
        "temp_store",
        "busy_timeout",
        "page_size",
        "journal_size_limit",
    ):
        rows = await conn.execute_query_dict(f"PRAGMA {name}")
        result[name] = next(iter(rows[0].values())) if rows else None
    return result
