"""Ids are never reused (docs/security.md "Ids are never reused").

A user id names the owner of messages, devices and sessions, and those rows
outlive the account (the log keeps its revocations, the peer keeps its copy of
a conversation). If a new account got the id of a deleted one it would read
them. So every generated primary key (``users.id``, ``messages.id`` = ``seq``,
``login_failures.id``) only ever grows:

* SQLite tables are ``AUTOINCREMENT`` (``sqlite_sequence`` remembers the largest
  id ever handed out, deleted or not); PostgreSQL sequences never go back.
* The *high-water mark* of a table is the largest of: its sequence, its largest
  id, and every id that other rows still reference (:data:`REFERENCES`: the
  messages and devices of deleted users).
* ``nexo db export`` writes each table's mark in its header, ``nexo db import``
  and ``nexo db push`` raise each sequence to at least the mark, never lower it.
  Push repairs databases imported before marks were exported, as far as the
  surviving rows tell.
"""

from __future__ import annotations

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient

#: Columns holding ids of another table: a referenced id is never handed out again,
#: even when the row it named is gone.
REFERENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "users": (
        ("sessions", "user_id"),
        ("devices", "user_id"),
        ("messages", "sender_id"),
        ("messages", "recipient_id"),
    ),
}


def generated_keys() -> dict[str, str]:
    """``{table: primary-key column}`` of every model whose key the database generates."""
    keys = {}
    for app in Tortoise.apps.values():
        for model in app.values():
            meta = model._meta
            if meta.pk.generated:
                keys[meta.db_table] = meta.db_pk_column
    return dict(sorted(keys.items()))


async def _scalar(conn: BaseDBAsyncClient, sql: str, values: list[object] | None = None) -> int:
    _, rows = await conn.execute_query(sql, values or [])
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


async def _pg_sequence(conn: BaseDBAsyncClient, table: str, column: str) -> str:
    _, rows = await conn.execute_query("SELECT pg_get_serial_sequence($1, $2)", [f'"{table}"', column])
    return str(rows[0][0])


async def sequence_value(conn: BaseDBAsyncClient, table: str, column: str) -> int:
    """The largest id the table's sequence has handed out (0 if none)."""
    if conn.capabilities.dialect == "postgres":
        sequence = await _pg_sequence(conn, table, column)
        _, rows = await conn.execute_query(f"SELECT last_value, is_called FROM {sequence}")
        return int(rows[0][0]) if rows[0][1] else 0
    return await _scalar(conn, "SELECT seq FROM sqlite_sequence WHERE name = ?", [table])


async def high_water(conn: BaseDBAsyncClient, table: str, column: str) -> int:
    """The largest id of ``table`` ever handed out or still referenced anywhere."""
    mark = max(
        await sequence_value(conn, table, column),
        await _scalar(conn, f'SELECT MAX("{column}") FROM "{table}"'),
    )
    for other, other_column in REFERENCES.get(table, ()):
        mark = max(mark, await _scalar(conn, f'SELECT MAX("{other_column}") FROM "{other}"'))
    return mark


async def high_waters(conn: BaseDBAsyncClient) -> dict[str, int]:
    """:func:`high_water` of every table with a generated key (for an export's header)."""
    return {table: await high_water(conn, table, column) for table, column in generated_keys().items()}


async def raise_sequences(conn: BaseDBAsyncClient, floors: dict[str, int] | None = None) -> dict[str, int]:
    """Make every generated key continue after its high-water mark (and after
    ``floors[table]``, an export's mark). Never lowers a sequence; returns the marks."""
    marks = {}
    for table, column in generated_keys().items():
        mark = max(await high_water(conn, table, column), (floors or {}).get(table, 0))
        marks[table] = mark
        if mark <= await sequence_value(conn, table, column):
            continue
        if conn.capabilities.dialect == "postgres":
            sequence = await _pg_sequence(conn, table, column)
            await conn.execute_query(f"SELECT setval('{sequence}', $1, true)", [mark])
        else:
            await conn.execute_query("DELETE FROM sqlite_sequence WHERE name = ?", [table])
            await conn.execute_query("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", [table, mark])
    return marks
