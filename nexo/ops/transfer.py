"""``nexo db export`` / ``nexo db import``: a verified, portable copy of every table.

File format (gzip of UTF-8 JSON lines):

1. a header ``{"format": "nexo-export", "format_version": 1, "schema_version",
   "source", "exported_at", "tables": {table: {"model", "columns", "rows", "sha256"}},
   "id_high_water": {table: largest id ever handed out}}`` (``nexo/platform/ids.py``: import
   makes new ids continue after it, so a deleted account's id is never reused; an
   export without it falls back to the largest ids it holds);
2. one line per row, ``{"t": table, "r": {column: value}}``, tables in
   dependency order, rows in primary-key order.

Values are portable: bytes as base64, datetimes as ISO 8601 UTC with
microseconds, UUIDs as text, enums by value. A table's ``sha256`` is the
digest of its rows' canonical JSON (sorted keys, no spaces), one per line, so
the same data gives the same digest on SQLite and PostgreSQL: import
recomputes it from the target database before committing.

Generic over every Tortoise model in ``nexo.platform.db.MODEL_MODULES`` (counters
included): a new table is exported without changes here.

One module of ~490 lines on purpose: export and import are the two sides of one file
format (the portable values, the canonical digest, the header), so a change to one is a
change to the other, and they are read side by side.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import json
import os
import sys
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import IO, Any

from tortoise import Tortoise, fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model
from tortoise.transactions import in_transaction

from nexo.platform import filemodes, ids
from nexo.platform.config import Settings
from nexo.platform.db import (
    SCHEMA_VERSION,
    close_db,
    connection,
    dialect,
    empty_tables,
    init_db,
    insert_rows,
    read_one_moment,
)

FORMAT = "nexo-export"
FORMAT_VERSION = 1
BATCH = 2000
#: Tables ``nexo db push`` fills on a fresh database, with the rows it may add:
#: a database holding only these is still "empty" for import.
BOOTSTRAP_ROWS = {"counters": None, "sths": 1}


class TransferError(Exception):
    """Export or import cannot go on; the message says why and what to do."""


@dataclass
class TableInfo:
    model: type[Model]
    table: str
    pk: str
    #: model field name -> db column, non-relational data fields only
    columns: dict[str, str]
    rows: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


# -- models and values --------------------------------------------------------------------


def tables() -> list[TableInfo]:
    """Every model table, parents before children (foreign keys)."""
    models: list[type[Model]] = []
    for app in Tortoise.apps.values():
        models.extend(app.values())
    by_class = {m: m for m in models}
    ordered: list[type[Model]] = []

    def visit(model: type[Model], seen: set[type[Model]]) -> None:
        if model in ordered or model in seen:
            return
        seen.add(model)
        for name in model._meta.fk_fields | model._meta.o2o_fields:
            related = model._meta.fields_map[name].related_model  # type: ignore[attr-defined]
            if related in by_class:
                visit(related, seen)
        ordered.append(model)

    for model in sorted(models, key=lambda m: m._meta.db_table):
        visit(model, set())
    infos = []
    for model in ordered:
        meta = model._meta
        columns = dict(meta.fields_db_projection)
        infos.append(TableInfo(model, meta.db_table, meta.pk_attr, columns))
    return infos


def to_portable(field_obj: fields.Field[Any], value: Any) -> Any:
    """A Python value of ``field_obj`` as a JSON value that reads back identically."""
    if value is None:
        return None
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def from_portable(field_obj: fields.Field[Any], value: Any) -> Any:
    """The inverse of :func:`to_portable`, by field type."""
    if value is None:
        return None
    if isinstance(field_obj, fields.BinaryField):
        return base64.b64decode(value)
    if isinstance(field_obj, fields.DatetimeField):
        return dt.datetime.fromisoformat(value)
    if isinstance(field_obj, fields.DateField):
        return dt.date.fromisoformat(value)
    if isinstance(field_obj, fields.TimeField):
        return dt.time.fromisoformat(value)
    if isinstance(field_obj, fields.TimeDeltaField):
        return dt.timedelta(seconds=value)
    if isinstance(field_obj, fields.UUIDField):
        return uuid.UUID(value)
    if isinstance(field_obj, fields.DecimalField):
        return Decimal(value)
    enum_type = getattr(field_obj, "enum_type", None)
    if enum_type is not None:
        return enum_type(value)
    return value


def canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


async def read_rows(info: TableInfo, conn: BaseDBAsyncClient) -> AsyncIterator[list[dict[str, Any]]]:
    """Portable rows of one table in primary-key order, in batches (keyset pagination)."""
    names = list(info.columns)
    fields_map = info.model._meta.fields_map
    last: Any = None
    while True:
        query = info.model.all().using_db(conn).order_by(info.pk).limit(BATCH)
        if last is not None:
            query = query.filter(**{f"{info.pk}__gt": last})
        batch = await query.values(*names)
        if not batch:
            return
        last = batch[-1][info.pk]
        yield [
            {info.columns[name]: to_portable(fields_map[name], row[name]) for name in names} for row in batch
        ]
        if len(batch) < BATCH:
            return


@asynccontextmanager
async def snapshot() -> AsyncIterator[BaseDBAsyncClient]:
    """One read transaction: every table is read as of the same moment."""
    async with in_transaction() as conn:
        await read_one_moment(conn)
        yield conn


# -- progress -----------------------------------------------------------------------------


class Progress:
    """A one-line progress bar per table on a terminal, a line per table otherwise."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def update(self, label: str, done: int, total: int | None) -> None:
        if not self.tty:
            return
        if total:
            filled = int(30 * done / total)
            bar = "#" * filled + "." * (30 - filled)
            self.stream.write(f"\r  {label:<24} [{bar}] {done}/{total}")
        else:
            self.stream.write(f"\r  {label:<24} {done} rows")
        self.stream.flush()

    def done(self, label: str, rows: int) -> None:
        prefix = "\r" if self.tty else ""
        self.stream.write(f"{prefix}  {label:<24} {rows} rows{' ' * 40}\n")
        self.stream.flush()


# -- export -------------------------------------------------------------------------------


async def export_database(out: Path, progress: Progress) -> dict[str, Any]:
    """Write the export file; returns its header."""
    infos = tables()
    filemodes.private_dir(out.parent)
    with tempfile.TemporaryFile("w+", encoding="utf-8", dir=out.parent) as body:
        async with snapshot() as conn:
            schema_rows = await conn.execute_query_dict("SELECT version FROM nexo_schema WHERE id = 1")
            schema_version = int(schema_rows[0]["version"]) if schema_rows else SCHEMA_VERSION
            id_high_water = await ids.high_waters(conn)
            for info in infos:
                total = await info.model.all().using_db(conn).count()
                async for batch in read_rows(info, conn):
                    for row in batch:
                        text = canonical(row)
                        info.digest.update(text.encode() + b"\n")
                        body.write(canonical({"t": info.table, "r": row}) + "\n")
                    info.rows += len(batch)
                    progress.update(info.table, info.rows, total)
                progress.done(info.table, info.rows)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "schema_version": schema_version,
            "source": dialect(),
            "exported_at": dt.datetime.now(dt.UTC).isoformat(),
            "tables": {
                info.table: {
                    "model": f"{info.model.__module__}.{info.model.__name__}",
                    "columns": sorted(info.columns.values()),
                    "rows": info.rows,
                    "sha256": info.digest.hexdigest(),
                }
                for info in infos
            },
            "id_high_water": id_high_water,
        }
        body.seek(0)
        partial = out.with_name(out.name + ".partial")
        # 0600 whatever the umask: an export holds password hashes and messages.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, filemodes.FILE_MODE))
        with gzip.open(partial, "wt", encoding="utf-8") as handle:
            handle.write(canonical(header) + "\n")
            for line in body:
                handle.write(line)
        os.replace(partial, out)
    return header


async def export_command(settings: Settings, out: Path | None) -> int:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out or Path(f"nexo-export-{stamp}.jsonl.gz")
    await _open(settings)
    try:
        print(f"exporting {settings.database_kind} to {out} (one read transaction)", file=sys.stderr)
        header = await export_database(out, Progress())
    finally:
        await close_db()
    total = sum(t["rows"] for t in header["tables"].values())
    print(f"exported {total} rows in {len(header['tables'])} tables to {out}")
    return 0


# -- reading an export --------------------------------------------------------------------


def _lines(path: Path) -> Iterator[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            yield from handle
    except FileNotFoundError:
        raise TransferError(f"{path}: no such file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError, OSError) as exc:
        raise TransferError(f"{path} is not a valid nexo export (corrupted or truncated: {exc})") from None


def read_export(path: Path) -> tuple[dict[str, Any], Iterator[tuple[str, dict[str, Any]]]]:
    """The header and an iterator of ``(table, row)``; raises :class:`TransferError` on damage."""
    lines = _lines(path)
    try:
        header = json.loads(next(lines))
    except StopIteration:
        raise TransferError(f"{path} is empty: not a nexo export") from None
    except json.JSONDecodeError:
        raise TransferError(f"{path} is not a valid nexo export (corrupted: no readable header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TransferError(f"{path} is not a nexo export (no {FORMAT!r} header)")
    if header.get("format_version") != FORMAT_VERSION:
        raise TransferError(f"{path} has export format {header.get('format_version')}; this Nexo reads 1")

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for number, line in enumerate(lines, start=2):
            try:
                item = json.loads(line)
                yield item["t"], item["r"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise TransferError(
                    f"{path} is not a valid nexo export (corrupted: line {number} is not an export row)"
                ) from None

    return header, rows()


def verify_file(path: Path) -> dict[str, Any]:
    """Check every row of the file against the header's counts and digests."""
    header, rows = read_export(path)
    counts: dict[str, int] = {}
    digests: dict[str, Any] = {}
    for table, row in rows:
        counts[table] = counts.get(table, 0) + 1
        digests.setdefault(table, hashlib.sha256()).update(canonical(row).encode() + b"\n")
    problems = []
    for table, meta in header["tables"].items():
        got_rows = counts.pop(table, 0)
        got_digest = digests[table].hexdigest() if table in digests else hashlib.sha256().hexdigest()
        if got_rows != meta["rows"] or got_digest != meta["sha256"]:
            problems.append(
                f"{table}: header says {meta['rows']} rows, file holds {got_rows} rows or differs"
            )
    if counts:
        problems.append(f"rows of tables missing from the header: {sorted(counts)}")
    if problems:
        raise TransferError(f"{path} is corrupted: " + "; ".join(problems))
    return header


# -- import -------------------------------------------------------------------------------


async def _row_counts(infos: list[TableInfo], conn: BaseDBAsyncClient) -> dict[str, int]:
    return {info.table: await info.model.all().using_db(conn).count() for info in infos}


def _check_empty(counts: dict[str, int]) -> list[str]:
    busy = []
    for table, rows in counts.items():
        if table in BOOTSTRAP_ROWS:
            allowed = BOOTSTRAP_ROWS[table]
            if allowed is None or rows <= allowed:
                continue
        if rows:
            busy.append(f"{table} ({rows} rows)")
    return busy


async def _insert(info: TableInfo, rows: list[dict[str, Any]], conn: BaseDBAsyncClient) -> None:
    """Write the rows with the exported values, timestamps included: the field's database
    value is taken for the model class, not an instance, so ``auto_now`` never applies."""
    fields_map = info.model._meta.fields_map
    by_column = {column: name for name, column in info.columns.items()}
    groups: dict[tuple[str, ...], list[list[Any]]] = {}
    for row in rows:
        values = []
        for column, value in row.items():
            field_obj = fields_map[by_column[column]]
            python = field_obj.to_python_value(from_portable(field_obj, value))
            values.append(field_obj.to_db_value(python, info.model))
        groups.setdefault(tuple(row), []).append(values)
    for columns, values_lists in groups.items():
        await insert_rows(conn, info.table, columns, values_lists)


async def import_database(path: Path, header: dict[str, Any], force: bool, progress: Progress) -> None:
    infos = tables()
    by_table = {info.table: info for info in infos}
    exported = header["tables"]
    if header.get("schema_version") != SCHEMA_VERSION:
        raise TransferError(
            f"the export has schema version {header.get('schema_version')}, this Nexo has "
            f"{SCHEMA_VERSION}: import with the Nexo version that exported it"
        )
    for table, meta in exported.items():
        info = by_table.get(table)
        if info is None:
            raise TransferError(f"the export holds table {table!r}, unknown to this Nexo")
        if sorted(info.columns.values()) != meta["columns"]:
            raise TransferError(f"table {table!r} has other columns here than in the export")
    async with in_transaction() as conn:
        busy = _check_empty(await _row_counts(infos, conn))
        if busy and not force:
            raise TransferError(
                "the target database is not empty (" + ", ".join(busy) + "): import into a fresh "
                "database (`nexo db push` on an empty one), or pass --force to replace its contents"
            )
        await empty_tables(conn, [info.table for info in infos])
        _, rows = read_export(path)
        pending: list[dict[str, Any]] = []
        current: str | None = None
        done = 0
        for table, row in rows:
            if table != current:
                if current is not None:
                    await _insert(by_table[current], pending, conn)
                    progress.done(current, done + len(pending))
                current, pending, done = table, [], 0
            pending.append(row)
            if len(pending) >= BATCH:
                await _insert(by_table[table], pending, conn)
                done += len(pending)
                pending = []
                progress.update(table, done, exported[table]["rows"])
        if current is not None:
            await _insert(by_table[current], pending, conn)
            progress.done(current, done + len(pending))
        # New ids continue after every id the source ever handed out, deleted or not.
        await ids.raise_sequences(conn, _id_floors(header))
        problems = await _verify_database(infos, exported, conn)
        if problems:
            raise TransferError("imported data differs from the export: " + "; ".join(problems))


def _id_floors(header: dict[str, Any]) -> dict[str, int]:
    marks = header.get("id_high_water")
    if not isinstance(marks, dict):
        return {}  # an export made before marks were recorded
    return {str(table): int(mark) for table, mark in marks.items() if isinstance(mark, int)}


async def _verify_database(
    infos: list[TableInfo], exported: dict[str, Any], conn: BaseDBAsyncClient
) -> list[str]:
    """Recompute counts and digests from the database (inside the import transaction)."""
    problems = []
    for info in infos:
        meta = exported.get(info.table, {"rows": 0, "sha256": hashlib.sha256().hexdigest()})
        digest, rows = hashlib.sha256(), 0
        async for batch in read_rows(info, conn):
            for row in batch:
                digest.update(canonical(row).encode() + b"\n")
            rows += len(batch)
        if rows != meta["rows"]:
            problems.append(f"{info.table}: {rows} rows, expected {meta['rows']}")
        elif digest.hexdigest() != meta["sha256"]:
            problems.append(f"{info.table}: digest differs")
    return problems


async def import_command(settings: Settings, path: Path, *, force: bool) -> int:
    print(f"checking {path}", file=sys.stderr)
    header = verify_file(path)
    await _open(settings, create_schema=True)
    try:
        print(
            f"importing into {settings.database_kind} in one transaction "
            f"(export from {header.get('source')} at {header.get('exported_at')})",
            file=sys.stderr,
        )
        await import_database(path, header, force, Progress())
        from nexo.transparency import service

        anomalies = await service.audit_database_summary(settings)
    finally:
        await close_db()
    total = sum(t["rows"] for t in header["tables"].values())
    print(f"imported {total} rows in {len(header['tables'])} tables; counts and digests match")
    if anomalies:
        print(f"chain audit FAILED: {anomalies}")
        return 1
    print("chain audit: clean")
    return 0


async def _open(settings: Settings, *, create_schema: bool = False) -> None:
    try:
        await init_db(settings, create_schema=create_schema)
        await connection().execute_query("SELECT 1")
    except Exception as exc:
        raise TransferError(f"cannot open the {settings.database_kind} database: {exc}") from None
