"""``nexo db export`` / ``nexo db import`` round trips on real SQLite and PostgreSQL (issue 8).

Every model table is filled with thousands of rows generated from its field
types (non-ASCII text, bytes, microsecond timestamps, nulls, gaps in ids), so
the test keeps covering tables that other features add later.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import os
import shutil
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from tortoise import fields
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.models import Model

from contracts.client import Account
from contracts.server import LocalServer, run_nexo
from nexo.ops import transfer
from nexo.platform import db
from nexo.platform.config import Settings
from tests.conftest import ServerFactory

pytestmark = pytest.mark.server

ROWS = 2500
SECRET = "t" * 48


def _env(data_dir: Path, database_url: str | None = None) -> dict[str, str]:
    # One signing key for every database of a test: the imported chain is signed with it.
    return {
        "JWT_SECRET": SECRET,
        "NEXO_DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url or "",
        "NEXO_SIGNING_KEY_FILE": str(data_dir.parent / "sth_signing.key"),
    }


def _settings(data_dir: Path, database_url: str | None = None) -> Settings:
    return Settings.from_env(_env(data_dir, database_url))


def _value(field_obj: fields.Field[Any], i: int, previous: dict[str, Any] | None) -> Any:
    if field_obj.null and i % 7 == 3:
        return None
    enum_type = getattr(field_obj, "enum_type", None)
    if enum_type is not None:
        return list(enum_type)[i % len(enum_type)]
    if isinstance(field_obj, fields.BooleanField):
        return i % 2 == 0
    if isinstance(field_obj, fields.IntField | fields.BigIntField | fields.SmallIntField):
        return 1_000_000 + i * 3
    if isinstance(field_obj, fields.FloatField):
        return i / 3
    if isinstance(field_obj, fields.DecimalField):
        return Decimal(i) / 4
    if isinstance(field_obj, fields.BinaryField):
        return os.urandom(32)
    if isinstance(field_obj, fields.DatetimeField):
        return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i, microseconds=i * 7 + 1)
    if isinstance(field_obj, fields.UUIDField):
        return uuid.uuid4()
    if isinstance(field_obj, fields.JSONField):
        return {"i": i, "ü": ["ok", None, 1.5]}
    if isinstance(field_obj, fields.TextField):
        return f"héllo wörld 🌍 — сообщение №{i} " * (1 + i % 5)
    if isinstance(field_obj, fields.CharField):
        return f"ü{i}"[: field_obj.max_length]
    raise AssertionError(f"no generator for {type(field_obj).__name__}: extend tests/ops/test_transfer.py")


def _row(model: type[Model], i: int, previous: dict[str, Any] | None) -> dict[str, Any]:
    meta = model._meta
    return {name: _value(meta.fields_map[name], i, previous) for name in meta.fields_db_projection}


#: Tables only a real server fills (a synthetic log would fail the chain audit).
REAL_ONLY = frozenset({"sths", "log_leaves", "log_nodes", "counters"})


def populate_live(server: LocalServer, users: int = 12) -> list[Account]:
    """Real rows through the API: accounts, refresh sessions, devices, revocations (log
    leaves and signed tree heads), failed logins, messages."""
    accounts = [Account.create(server.base_url) for _ in range(users)]
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for n, account in enumerate(accounts):
            account.relogin()  # a second refresh session
            ids = []
            for kind in ("ed25519", "x25519"):
                key = base64.b64encode(os.urandom(32)).decode()
                response = client.post(
                    "/api/devices",
                    json={"name": f"dévice {n} {kind}", "public_key": key, "key_type": kind},
                    headers=account.headers,
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["device"]["id"])
            if n % 3 == 0:
                assert client.delete(f"/api/devices/{ids[0]}", headers=account.headers).status_code == 200
            client.post("/api/auth/login", json={"username": account.username, "password": "wrong-pass"})
            peer = accounts[(n + 1) % len(accounts)]
            for k in range(5):
                response = client.post(
                    "/api/messages",
                    json={"message_id": str(uuid.uuid4()), "to": peer.username, "body": f"привет 👋 {n}.{k}"},
                    headers=account.headers,
                )
                assert response.status_code == 201, response.text
    return accounts


async def populate(settings: Settings, rows: int = ROWS) -> dict[str, int]:
    """Add ``rows`` synthetic rows to every model table but the log's; returns row counts."""
    await db.init_db(settings, create_schema=True)
    counts = {}
    try:
        for info in transfer.tables():
            if info.table in REAL_ONLY:
                counts[info.table] = await info.model.all().count()
                continue
            previous: dict[str, Any] | None = None
            objects = []
            for i in range(rows):
                values = _row(info.model, i, previous)
                previous = values
                objects.append(info.model(**values))
            await info.model.bulk_create(objects, batch_size=500)
            counts[info.table] = await info.model.all().count()
    finally:
        await _close()
    return counts


async def _close() -> None:
    """Close Tortoise and forget its per-connection-name SQL cache: these tests switch
    between SQLite and PostgreSQL in one process, which a server never does."""
    await db.close_db()
    EXECUTOR_CACHE.clear()


def header_counter(path: Path, name: str) -> int:
    """A maintained counter's value as exported."""
    for line in gzip.open(path, "rt", encoding="utf-8"):
        item = json.loads(line)
        if item.get("t") == "counters" and item["r"]["name"] == name:
            return int(item["r"]["value"])
    raise AssertionError(f"no counter {name!r} in {path}")


def _header(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return dict(json.loads(handle.readline()))


def _run(args: list[str], env: dict[str, str], cwd: Path, expect: int = 0) -> str:
    result = run_nexo(args, env, cwd, timeout=300)
    assert result.returncode == expect, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout + result.stderr


async def test_round_trip_sqlite_postgres_sqlite_is_lossless(
    tmp_path: Path, pg_url: str, make_server: ServerFactory
) -> None:
    live = make_server({"DATABASE_URL": ""})
    accounts = populate_live(live)
    live.stop()
    source = live.data_dir
    shutil.copy(source / "sth_signing.key", _env(source)["NEXO_SIGNING_KEY_FILE"])
    counts = await populate(_settings(source))
    assert counts["sths"] > 10 and counts["log_leaves"] > 20
    first = tmp_path / "first.jsonl.gz"
    out = _run(["db", "export", "--out", str(first)], _env(source), tmp_path)
    assert "exported" in out
    header = _header(first)
    assert header["schema_version"] == db.SCHEMA_VERSION
    assert {t: m["rows"] for t, m in header["tables"].items()} == counts

    # SQLite -> PostgreSQL, the runbook's way: push the schema, then import.
    pg_env = _env(tmp_path / "pg-data", pg_url)
    _run(["db", "push"], pg_env, tmp_path)
    out = _run(["db", "import", str(first)], pg_env, tmp_path)
    assert "counts and digests match" in out and "chain audit: clean" in out
    second = tmp_path / "second.jsonl.gz"
    _run(["db", "export", "--out", str(second)], pg_env, tmp_path)
    assert _header(second)["source"] == "postgres"
    assert _header(second)["tables"] == header["tables"]

    # PostgreSQL -> a fresh SQLite.
    back = tmp_path / "back"
    _run(["db", "import", str(second)], _env(back), tmp_path)
    third = tmp_path / "third.jsonl.gz"
    _run(["db", "export", "--out", str(third)], _env(back), tmp_path)
    assert _header(third)["tables"] == header["tables"]

    # A server on the imported PostgreSQL database: same users, passwords, counters and
    # log; new rows continue after the imported ids.
    conn = await asyncpg.connect(pg_url)
    try:
        largest_seq = int(await conn.fetchval("SELECT MAX(id) FROM messages"))
    finally:
        await conn.close()
    served = make_server({"DATABASE_URL": pg_url, "NEXO_SIGNING_KEY_FILE": pg_env["NEXO_SIGNING_KEY_FILE"]})
    _check_served(served, accounts, header_counter(first, "users"), counts["sths"], largest_seq)


def _check_served(
    served: LocalServer, accounts: list[Account], users: int, sths: int, largest_seq: int
) -> None:
    health = httpx.get(f"{served.base_url}/api/health").json()
    assert health["users_count"] == users
    assert health["sth_count"] == sths
    sender, peer = accounts[0], accounts[1]
    sender.base_url = served.base_url
    sender.relogin()  # the password hash came across
    response = httpx.post(
        f"{served.base_url}/api/messages",
        json={"message_id": str(uuid.uuid4()), "to": peer.username, "body": "after the move"},
        headers=sender.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["seq"] == largest_seq + 1


async def test_import_continues_ids_after_the_imported_ones(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "source"
    await populate(_settings(source), rows=50)
    export = tmp_path / "e.jsonl.gz"
    _run(["db", "export", "--out", str(export)], _env(source), tmp_path)
    _run(["db", "import", str(export)], _env(tmp_path / "pg", pg_url), tmp_path)
    await db.init_db(_settings(tmp_path / "pg", pg_url), create_schema=False)
    try:
        for info in transfer.tables():
            meta = info.model._meta
            if not meta.pk.generated or info.table in REAL_ONLY:
                continue
            newest = await info.model.all().order_by(f"-{meta.pk_attr}").first()
            assert newest is not None
            values = _row(info.model, 10_000, None)
            values.pop(meta.pk_attr)
            created = await info.model.create(**values)
            assert created.pk == newest.pk + 1, info.table
    finally:
        await _close()


async def test_import_refuses_a_non_empty_database_unless_forced(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await populate(_settings(source), rows=20)
    export = tmp_path / "e.jsonl.gz"
    _run(["db", "export", "--out", str(export)], _env(source), tmp_path)
    out = _run(["db", "import", str(export)], _env(source), tmp_path, expect=1)
    assert "not empty" in out and "--force" in out
    out = _run(["db", "import", str(export), "--force"], _env(source), tmp_path)
    assert "counts and digests match" in out


async def test_corrupted_exports_are_rejected_clearly(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await populate(_settings(source), rows=200)
    export = tmp_path / "e.jsonl.gz"
    _run(["db", "export", "--out", str(export)], _env(source), tmp_path)
    raw = export.read_bytes()
    target = _env(tmp_path / "target")

    flipped = tmp_path / "flipped.jsonl.gz"
    middle = len(raw) // 2
    flipped.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :])
    out = _run(["db", "import", str(flipped)], target, tmp_path, expect=1)
    assert "not a valid nexo export" in out or "is corrupted" in out

    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(raw[: len(raw) - 100])
    assert "not a valid nexo export" in _run(["db", "import", str(truncated)], target, tmp_path, expect=1)

    # A well-formed gzip whose rows were edited: the digests catch it.
    lines = gzip.decompress(raw).decode().splitlines(keepends=True)
    lines[5] = lines[5].replace('"r":{', '"r":{"x":0,', 1) if '"x"' not in lines[5] else lines[5]
    edited = tmp_path / "edited.jsonl.gz"
    edited.write_bytes(gzip.compress("".join(lines[:-1]).encode()))
    out = _run(["db", "import", str(edited)], target, tmp_path, expect=1)
    assert "corrupted" in out

    not_export = tmp_path / "not.jsonl.gz"
    not_export.write_bytes(gzip.compress(b'{"hello": 1}\n'))
    assert "not a nexo export" in _run(["db", "import", str(not_export)], target, tmp_path, expect=1)

    # Nothing was half-imported into the target.
    await db.init_db(_settings(tmp_path / "target"), create_schema=True)
    try:
        for info in transfer.tables():
            assert await info.model.all().count() == 0, info.table
    finally:
        await _close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_check_duplicates_runs_the_runbook_query(tmp_path: Path, pg_url: str, kind: str) -> None:
    env = _env(tmp_path / "data", pg_url if kind == "postgres" else None)
    _run(["db", "push"], env, tmp_path)
    assert "no duplicate messages" in _run(["check-duplicates"], env, tmp_path)
    # A legacy table without the unique constraint, as the runbook fears.
    await db.init_db(_settings(tmp_path / "data", env["DATABASE_URL"] or None), create_schema=False)
    try:
        conn = db.connection()
        await conn.execute_script("DROP TABLE messages")
        await conn.execute_script("CREATE TABLE messages (id INTEGER, message_id VARCHAR(36))")
        await conn.execute_script(
            "INSERT INTO messages VALUES (1, 'aaaa'), (2, 'aaaa'), (3, 'bbbb'), (4, 'cccc'), (5, 'cccc')"
        )
    finally:
        await _close()
    out = _run(["check-duplicates"], env, tmp_path, expect=1)
    assert "aaaa\t2" in out and "cccc\t2" in out and "bbbb" not in out


def test_import_audits_the_chain_with_the_log_key(tmp_path: Path, make_server: ServerFactory) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    live = make_server({"DATABASE_URL": ""})
    populate_live(live, users=2)
    live.stop()
    export = tmp_path / "live.jsonl.gz"
    source_env = {**_env(live.data_dir), "NEXO_SIGNING_KEY_FILE": str(live.data_dir / "sth_signing.key")}
    _run(["db", "export", "--out", str(export)], source_env, tmp_path)

    right = {**_env(tmp_path / "right"), "NEXO_SIGNING_KEY_FILE": source_env["NEXO_SIGNING_KEY_FILE"]}
    assert "chain audit: clean" in _run(["db", "import", str(export)], right, tmp_path)

    missing = {**_env(tmp_path / "missing"), "NEXO_SIGNING_KEY_FILE": str(tmp_path / "nowhere.key")}
    out = _run(["db", "import", str(export)], missing, tmp_path, expect=1)
    assert "chain audit FAILED" in out and "no log signing key" in out

    other_key = tmp_path / "other.key"
    other_key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    wrong = {**_env(tmp_path / "wrong"), "NEXO_SIGNING_KEY_FILE": str(other_key)}
    out = _run(["db", "import", str(export)], wrong, tmp_path, expect=1)
    assert "chain audit FAILED" in out and "signature does not verify" in out
