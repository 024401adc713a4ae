"""Shared fixtures: real servers on free ports, on the backend the run selects.

``NEXO_TEST_BACKEND=sqlite`` (default) or ``postgres`` picks the database for
every server a test starts; PostgreSQL servers each get a scratch database.
``NEXO_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/0) is used by tests
that need Redis.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contracts.server import DEFAULT_REDIS_URL, LocalServer, run_async, scratch_postgres
from nexo import db

BACKEND = os.environ.get("NEXO_TEST_BACKEND", "sqlite")
if BACKEND not in {"sqlite", "postgres"}:
    raise RuntimeError(f"NEXO_TEST_BACKEND={BACKEND!r}: use sqlite or postgres")

REDIS_URL = os.environ.get("NEXO_TEST_REDIS_URL", DEFAULT_REDIS_URL)

ServerFactory = Callable[..., LocalServer]

#: Budget given to test servers unless a test sets ``NEXO_RATE_LIMIT`` itself.
TEST_RATE_LIMIT = "100000/minute"


@pytest.fixture(scope="session")
def backend() -> str:
    return BACKEND


@contextlib.contextmanager
def server_factory(base_dir: Path) -> Iterator[ServerFactory]:
    """Yields ``make(env=None, workers=1, database_url=None, start=True, ...)``.

    Each server gets its own data dir; on PostgreSQL its own scratch database
    unless ``database_url`` is given (to share one between servers).
    """
    servers: list[LocalServer] = []
    stack = contextlib.ExitStack()
    counter = 0

    def make(
        env: dict[str, str] | None = None,
        *,
        workers: int = 1,
        database_url: str | None = None,
        start: bool = True,
        **kwargs: object,
    ) -> LocalServer:
        nonlocal counter
        counter += 1
        merged = dict(env or {})
        # Feature tests make far more than 100 requests a minute from one address; the
        # rate-limit tests (tests/test_ratelimit.py) set the real budgets explicitly.
        merged.setdefault("NEXO_RATE_LIMIT", TEST_RATE_LIMIT)
        merged.setdefault("NEXO_AUTH_RATE_LIMIT", TEST_RATE_LIMIT)
        if BACKEND == "postgres" and "DATABASE_URL" not in merged:
            merged["DATABASE_URL"] = database_url or stack.enter_context(scratch_postgres())
        shared_url = merged.get("DATABASE_URL")
        if shared_url and "NEXO_SIGNING_KEY_FILE" not in merged:
            # Servers on one database are one log: they share its signing key, as in production.
            digest = hashlib.sha256(shared_url.encode()).hexdigest()[:16]
            merged["NEXO_SIGNING_KEY_FILE"] = str(base_dir / "log-keys" / f"{digest}.pem")
        server = LocalServer(base_dir / f"server{counter}", merged, workers=workers, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start() if start else server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
        stack.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """A factory of servers torn down after the test."""
    with server_factory(tmp_path) as make:
        yield make


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One default server shared by a test module (tests make their own users)."""
    with server_factory(tmp_path_factory.mktemp("server")) as make:
        yield make()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database, whatever the selected backend."""
    with scratch_postgres() as url:
        yield url


def db_execute(server: LocalServer, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Run one statement (``?`` placeholders) on the server's database, behind its back."""
    url = server.env.get("DATABASE_URL")
    if url:

        async def run() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(db.placeholders(sql, "postgres"), *params)
            finally:
                await conn.close()

        run_async(run())
    else:
        with sqlite3.connect(server.data_dir / "nexo.db") as conn:
            conn.execute(sql, params)


def db_scalar(server: LocalServer, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row of one query (``?`` placeholders), behind the server's back."""
    url = server.env.get("DATABASE_URL")
    if url:

        async def run() -> Any:
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval(db.placeholders(sql, "postgres"), *params)
            finally:
                await conn.close()

        return run_async(run())
    with sqlite3.connect(server.data_dir / "nexo.db") as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None
