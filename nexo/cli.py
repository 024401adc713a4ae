"""The ``nexo`` command.

Runbook mapping: ``npm run dev`` is ``nexo dev``, ``npm start`` is
``nexo serve`` and ``npm run db:push`` is ``nexo db push``.
Exit codes: 0 success, 1 a check found a problem, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import Callable, Sequence

from nexo import __version__
from nexo.devices import commands as devices_commands
from nexo.ops import commands as ops_commands
from nexo.ops import contracts_command
from nexo.platform import filemodes
from nexo.platform.config import ConfigError
from nexo.platform.console import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM, fail, load_settings
from nexo.transparency import commands as transparency_commands

# -- serve / dev ---------------------------------------------------------------------------


def _apply_server_options(args: argparse.Namespace) -> None:
    """Command-line options win over the environment; workers re-read it."""
    if args.port is not None:
        os.environ["PORT"] = str(args.port)
    if args.host is not None:
        os.environ["HOST"] = args.host
    if getattr(args, "workers", None) is not None:
        os.environ["NEXO_WORKERS"] = str(args.workers)
    if args.cert is not None:
        os.environ["NEXO_TLS_CERT"] = args.cert
    if args.key is not None:
        os.environ["NEXO_TLS_KEY"] = args.key


def _run_server(args: argparse.Namespace, *, dev: bool) -> int:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from nexo.app import create_app, prepare_storage
    from nexo.platform.db import close_db
    from nexo.platform.tls import server_ssl

    _apply_server_options(args)
    if dev:
        os.environ["NEXO_DEV"] = "1"
    try:
        settings = load_settings(dev=dev)
        settings.check_deployment()
        cert, key = settings.tls_cert, settings.tls_key
        ssl = server_ssl(cert, key) if cert is not None and key is not None else None
    except ConfigError as exc:
        return fail(str(exc))

    async def preflight() -> None:
        try:
            await prepare_storage(settings)
        finally:
            await close_db()

    try:
        asyncio.run(preflight())
    except ConfigError as exc:
        return fail(str(exc))
    except (OSError, ConnectionError) as exc:
        return fail(f"cannot reach the {settings.database_kind} database: {exc}", EXIT_PROBLEM)
    except Exception as exc:
        return fail(f"cannot prepare the {settings.database_kind} database: {exc}", EXIT_PROBLEM)

    if settings.workers > 1 or dev:
        # Workers are fresh processes: they read this before importing prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="nexo-metrics-")
    loader = AppLoader(factory=create_app)
    app = loader.load()
    single = settings.workers == 1 and not dev
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        single_process=single,
        auto_reload=dev,
        dev=dev,
        access_log=False,
        motd=dev,
        ssl=ssl,
    )
    if single:
        Sanic.serve_single(primary=app)
    else:
        Sanic.serve(primary=app, app_loader=loader)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    return _run_server(args, dev=False)


def cmd_dev(args: argparse.Namespace) -> int:
    return _run_server(args, dev=True)


# -- db ------------------------------------------------------------------------------------


def cmd_db_push(args: argparse.Namespace) -> int:
    from nexo.app import prepare_storage
    from nexo.platform.db import SCHEMA_VERSION, close_db

    try:
        settings = load_settings(dev=True)
    except ConfigError as exc:
        return fail(str(exc))

    async def push() -> None:
        try:
            await prepare_storage(settings)
        finally:
            await close_db()

    try:
        asyncio.run(push())
    except Exception as exc:
        return fail(f"schema push failed on {settings.database_kind}: {exc}", EXIT_PROBLEM)
    where = (settings.database_url and _redact(settings.database_url)) or str(settings.sqlite_path)
    print(f"schema version {SCHEMA_VERSION} is in place on {settings.database_kind} ({where})")
    return EXIT_OK


def _redact(url: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


# -- parser --------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace], int]


def _server_options(parser: argparse.ArgumentParser, *, workers: bool) -> None:
    parser.add_argument("--host", help="interface to listen on (env HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (env PORT, default 5000)")
    if workers:
        parser.add_argument(
            "--workers",
            type=int,
            help="worker processes (env NEXO_WORKERS, default 1; more than 1 needs PostgreSQL)",
        )
    parser.add_argument("--cert", help="TLS certificate (PEM) to serve HTTPS and wss:// directly")
    parser.add_argument("--key", help="TLS private key (PEM) that goes with --cert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexo",
        description="Nexo: accounts, a verifiable key transparency log and an exactly-once "
        "WebSocket relay. Configuration comes from the environment; see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"nexo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the server (the runbook's `npm start`)",
        description="Run the production server. Requires JWT_SECRET (32+ random bytes). "
        "Uses SQLite at $NEXO_DATA_DIR/nexo.db unless DATABASE_URL is set.",
    )
    _server_options(serve, workers=True)
    serve.set_defaults(handler=cmd_serve)

    dev = commands.add_parser(
        "dev",
        help="run with auto-reload (the runbook's `npm run dev`)",
        description="Development server with auto-reload. Without JWT_SECRET it creates a random "
        "secret once in the data directory and reuses it, so tokens survive restarts.",
    )
    _server_options(dev, workers=False)
    dev.set_defaults(handler=cmd_dev)

    db = commands.add_parser("db", help="database schema and data", description="Database tools.")
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    push = db_commands.add_parser(
        "push",
        help="create or migrate the schema (the runbook's `npm run db:push`)",
        description="Create missing tables and indexes on SQLite or DATABASE_URL. "
        "Never drops or rewrites data. Safe to run on every deploy.",
    )
    push.set_defaults(handler=cmd_db_push)

    def db_usage(_args: argparse.Namespace) -> int:
        db.print_help()
        return EXIT_CONFIG

    db.set_defaults(handler=db_usage)

    for register in EXTRA_COMMANDS:
        register(commands)
    return parser


#: Functions that add more subcommands (``register(subparsers)``), one per feature.
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []
EXTRA_COMMANDS.append(contracts_command.register)
EXTRA_COMMANDS.append(transparency_commands.register)
EXTRA_COMMANDS.append(devices_commands.register)
EXTRA_COMMANDS.append(ops_commands.register)


def main(argv: Sequence[str] | None = None) -> int:
    filemodes.restrict_umask()  # data dir, database, keys, exports: private (0700 / 0600)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
