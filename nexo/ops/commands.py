"""``nexo check-duplicates``, ``nexo doctor``, ``nexo db export`` and ``nexo db import``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from nexo.platform.config import ConfigError
from nexo.platform.console import EXIT_OK, EXIT_PROBLEM, fail, load_settings

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def cmd_check_duplicates(args: argparse.Namespace) -> int:
    from nexo.ops.repository import find_duplicate_message_ids
    from nexo.platform.db import close_db, init_db

    try:
        settings = load_settings(dev=True)
    except ConfigError as exc:
        return fail(str(exc))

    async def run() -> list[tuple[str, int]]:
        await init_db(settings, create_schema=False)
        try:
            return await find_duplicate_message_ids()
        finally:
            await close_db()

    try:
        rows = asyncio.run(run())
    except Exception as exc:
        return fail(f"cannot query the {settings.database_kind} database: {exc}", EXIT_PROBLEM)
    if not rows:
        print(f"no duplicate messages ({settings.database_kind})")
        return EXIT_OK
    print(f"{len(rows)} message ids stored more than once ({settings.database_kind}):")
    for message_id, copies in rows:
        print(f"{message_id}\t{copies}")
    return EXIT_PROBLEM


def cmd_doctor(args: argparse.Namespace) -> int:
    from nexo.ops.doctor import Check, Doctor, load
    from nexo.platform.db import close_db, init_db

    settings, error = load(dev=False)
    url = args.url or f"http://127.0.0.1:{settings.port if settings else 5000}"
    use_db = not args.no_db and settings is not None
    print(
        f"nexo doctor: {url}" + (f" and the {settings.database_kind} database" if use_db and settings else "")
    )

    def report(check: Check) -> None:
        print(check.line(), flush=True)

    async def run() -> list[Check]:
        if use_db and settings is not None:
            await init_db(settings, create_schema=False)
        try:
            return await Doctor(url, settings, error, use_db).run(report)
        finally:
            if use_db:
                await close_db()

    try:
        results = asyncio.run(run())
    except Exception as exc:
        return fail(f"doctor could not run: {exc}", EXIT_PROBLEM)
    failed = sum(not c.ok for c in results)
    print(f"{len(results) - failed}/{len(results)} checks pass")
    return EXIT_PROBLEM if failed else EXIT_OK


def cmd_db_export(args: argparse.Namespace) -> int:
    from nexo.ops import transfer

    try:
        settings = load_settings(dev=True)
    except ConfigError as exc:
        return fail(str(exc))
    out = Path(args.out) if args.out else None
    try:
        return asyncio.run(transfer.export_command(settings, out))
    except transfer.TransferError as exc:
        return fail(str(exc), EXIT_PROBLEM)


def cmd_db_import(args: argparse.Namespace) -> int:
    from nexo.ops import transfer

    try:
        settings = load_settings(dev=True)
    except ConfigError as exc:
        return fail(str(exc))
    try:
        return asyncio.run(transfer.import_command(settings, Path(args.file), force=args.force))
    except transfer.TransferError as exc:
        return fail(str(exc), EXIT_PROBLEM)


def _db_subparsers(commands: SubParsers) -> SubParsers:
    db = commands.choices["db"]
    for action in db._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("the `db` command has no subcommands")  # pragma: no cover


def register(commands: SubParsers) -> None:
    dup = commands.add_parser(
        "check-duplicates",
        help="the runbook's duplicate-message query on the configured database",
        description="Run the runbook's query (SELECT message_id, COUNT(*) FROM messages GROUP BY "
        "message_id HAVING COUNT(*) > 1) on SQLite or DATABASE_URL. Exit 0 when there are none, "
        "1 with the ids when there are.",
    )
    dup.set_defaults(handler=cmd_check_duplicates)

    doctor = commands.add_parser(
        "doctor",
        help="walk the runbook's monitoring checklist, item by item",
        description="Check every item of the runbook's monitoring checklist and print ✓/✗ for each: "
        "health under 200 ms, no duplicate messages, WebSocket up (4401 on a bad token), STH chain "
        "index incrementing and audit clean, JWT settings sane, rate limiting active. "
        "Exit 1 if any item fails.",
    )
    doctor.add_argument("--url", help="the deployment to check (default http://127.0.0.1:$PORT)")
    doctor.add_argument(
        "--no-db", action="store_true", help="skip checks that need the database (duplicates)"
    )
    doctor.set_defaults(handler=cmd_doctor)

    db_commands = _db_subparsers(commands)
    export = db_commands.add_parser(
        "export",
        help="write every table to one verified file (SQLite or PostgreSQL)",
        description="Export a consistent snapshot (one read transaction) of every table to a gzipped "
        "JSON-lines file with a header of schema version, row counts and per-table SHA-256 digests. "
        "Safe while the server runs.",
    )
    export.add_argument("--out", help="output file (default nexo-export-<UTC time>.jsonl.gz)")
    export.set_defaults(handler=cmd_db_export)

    imp = db_commands.add_parser(
        "import",
        help="load an export into an empty database and verify it",
        description="Import a `nexo db export` file into the configured database in one transaction, "
        "keeping ids, seq values and timestamps, then verify row counts and digests and audit the "
        "STH chain. Refuses a non-empty database unless --force (which replaces its contents). "
        "Exit 1 on any mismatch.",
    )
    imp.add_argument("file", help="the export file")
    imp.add_argument("--force", action="store_true", help="replace the contents of a non-empty database")
    imp.set_defaults(handler=cmd_db_import)
