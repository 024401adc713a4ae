"""Shared fixtures: real servers on free ports, on the backend the run selects.

A test that starts a server, or opens a socket or a database, is a *server* test:
its module says ``pytestmark = pytest.mark.server``. tox's ``unit`` env runs the
others (``-m "not server"``), ``sqlite`` and ``postgres`` run these (``-m server``).
A test without the mark that connects or binds a socket, or opens SQLite other than
a private ``:memory:`` database, fails
(:func:`pure_tests_open_no_socket_or_database`), so no server test can slip into
``unit``, where it would run on SQLite only.

``NEXO_TEST_BACKEND=sqlite`` (default) or ``postgres`` picks the database for
every server a test starts; PostgreSQL servers each get a scratch database.
``NEXO_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/0) is used by tests
that need Redis.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contracts.server import DEFAULT_REDIS_URL, LocalServer, run_async, scratch_postgres
from nexo.platform import db

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
        # rate-limit tests (tests/platform/test_ratelimit.py) set the real budgets explicitly.
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


@pytest.fixture(autouse=True)
def pure_tests_open_no_socket_or_database(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Fail a test not marked ``server`` that connects or binds a socket or opens SQLite.

    Only a private ``:memory:`` SQLite database is allowed (it lives and dies in the
    test's process).

    The attempt raises, and is failed again at teardown in case the code under
    test swallowed the error.
    """
    if request.node.get_closest_marker("server"):
        yield
        return
    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: object, **kwargs: object) -> Any:
            attempts.append(f"{what}{args[1:] if what.startswith('socket') else args}")
            raise PureTestOpenedIO(
                f"{request.node.nodeid} is not marked server but called {attempts[-1]}: "
                "add pytestmark = pytest.mark.server to its module"
            )

        return refused

    for method in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, method, refuse(f"socket.{method}"))
    open_sqlite, refused_sqlite = sqlite3.connect, refuse("sqlite3.connect")

    def connect_sqlite(database: object, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        # A private in-memory database is part of the test's process, like any object.
        if database == ":memory:":
            return open_sqlite(database, *args, **kwargs)
        return refused_sqlite(database, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", connect_sqlite)
    yield
    if attempts:
        pytest.fail(f"{request.node.nodeid} is not marked server but called {', '.join(attempts)}")


class PureTestOpenedIO(Exception):
    """Raised by a socket or SQLite call in a test not marked ``server``."""
