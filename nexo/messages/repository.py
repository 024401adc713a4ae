"""Every query of the messages feature.

The hot path (:func:`insert_batch`) is raw SQL on ``nexo.platform.db.connection()``:
one multi-row ``INSERT ... ON CONFLICT (message_id) DO NOTHING RETURNING``
per group commit. Exactly-once comes from the unique constraint on
``message_id``, never from a check before the insert (a check-then-insert
races with a concurrent retry of the same message).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from tortoise.transactions import in_transaction

from nexo.platform import db

#: Rows per INSERT statement; 5 parameters each stays under every driver's limit.
MAX_ROWS_PER_STATEMENT = 1000
#: PostgreSQL advisory lock key held while a batch inserts and commits, so seq
#: (the sync cursor) is handed out in commit order across workers and instances.
SEQ_LOCK_KEY = 0x4E45584F4D5347  # "NEXOMSG"


class NewMessage(NamedTuple):
    message_id: str
    sender_id: int
    recipient_id: int
    body: str
    server_ts: int
    #: The sender's session; on PostgreSQL the row is stored only if it is still live at commit.
    session_id: str | None = None


class StoredMessage(NamedTuple):
    seq: int
    message_id: str
    sender_id: int
    recipient_id: int
    body: str
    server_ts: int
    delivered_at: int | None = None
    sender: str | None = None
    recipient: str | None = None


async def _rows(sql: str, values: Sequence[Any]) -> list[dict[str, Any]]:
    """Run ``sql``, written with ``?`` placeholders (:func:`nexo.platform.db.sql_for`), on the default
    connection."""
    conn = db.connection()
    return await conn.execute_query_dict(db.sql_for(sql, conn), list(values))


async def insert_batch(rows: Sequence[NewMessage]) -> dict[str, int]:
    """Insert rows whose ``message_id`` is new; return ``{message_id: seq}`` of those inserted.

    ``rows`` must not repeat a ``message_id``; seqs follow their order. On
    SQLite one statement per :data:`MAX_ROWS_PER_STATEMENT` rows, all committed
    together; the INSERT is the first statement, so the write lock is taken at
    once (no read-then-write "database is locked"). On PostgreSQL one statement
    whose advisory lock orders commits by seq across workers and instances.
    """
    if not rows:
        return {}
    inserted: dict[str, int] = {}
    if db.dialect() == "postgres":
        # One statement, one round trip, its own transaction: the CTE takes the
        # advisory lock before the INSERT draws any seq (volatile CTEs are not
        # inlined and run before their first row), and holds it until commit.
        result = await db.connection().execute_query_dict(
            _PG_INSERT,
            [
                [row.message_id for row in rows],
                [row.sender_id for row in rows],
                [row.recipient_id for row in rows],
                [row.body for row in rows],
                [row.server_ts for row in rows],
                [row.session_id for row in rows],
            ],
        )
        return {record["message_id"]: int(record["id"]) for record in result}
    chunks = [rows[i : i + MAX_ROWS_PER_STATEMENT] for i in range(0, len(rows), MAX_ROWS_PER_STATEMENT)]
    if len(chunks) == 1:
        # One statement is its own transaction in SQLite's autocommit mode.
        await _insert_chunk(db.connection(), chunks[0], inserted)
    else:
        async with in_transaction() as conn:
            for chunk in chunks:
                await _insert_chunk(conn, chunk, inserted)
    return inserted


#: Several workers: a session ended on one worker is seen by the others' polls only within
#: 0.5 s, so the row's own statement checks that its sender's session is still live. The
#: statement's snapshot is taken when it starts, after the frame was read, so a revocation
#: committed before that (logout answered before the client wrote the frame) is always seen:
#: nothing read after the revocation is stored. A refused row is simply not returned.
_PG_INSERT = (
    f"WITH seq_lock AS (SELECT pg_advisory_xact_lock({SEQ_LOCK_KEY})) "
    "INSERT INTO messages (message_id, sender_id, recipient_id, body, server_ts) "
    "SELECT u.message_id, u.sender_id, u.recipient_id, u.body, u.server_ts "
    "FROM seq_lock, "
    "unnest($1::varchar[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::varchar[]) "
    "WITH ORDINALITY AS u(message_id, sender_id, recipient_id, body, server_ts, session_id, n) "
    "WHERE u.session_id IS NULL OR EXISTS "
    "(SELECT 1 FROM sessions s WHERE s.id = u.session_id AND s.revoked_at IS NULL) ORDER BY u.n "
    "ON CONFLICT (message_id) DO NOTHING RETURNING id, message_id"
)


async def _insert_chunk(conn: Any, chunk: Sequence[NewMessage], out: dict[str, int]) -> None:
    """SQLite's multi-row INSERT of one chunk (PostgreSQL inserts with :data:`_PG_INSERT`)."""
    values: list[Any] = []
    for row in chunk:
        values += (row.message_id, row.sender_id, row.recipient_id, row.body, row.server_ts)
    sql = (
        "INSERT INTO messages (message_id, sender_id, recipient_id, body, server_ts) VALUES "
        + ",".join(["(?,?,?,?,?)"] * len(chunk))
        + " ON CONFLICT (message_id) DO NOTHING RETURNING id, message_id"
    )
    # execute_query_dict, not execute_query: Tortoise's asyncpg client drops RETURNING rows of an INSERT.
    result = await conn.execute_query_dict(db.sql_for(sql, conn), values)
    for record in result:
        out[record["message_id"]] = int(record["id"])


_COLUMNS = "m.id, m.message_id, m.sender_id, m.recipient_id, m.body, m.server_ts, m.delivered_at"
_WITH_NAMES = (
    f"SELECT {_COLUMNS}, s.username AS sender, r.username AS recipient FROM messages m "
    "LEFT JOIN users s ON s.id = m.sender_id LEFT JOIN users r ON r.id = m.recipient_id"
)


def _stored(record: Any) -> StoredMessage:
    return StoredMessage(
        seq=int(record["id"]),
        message_id=record["message_id"],
        sender_id=int(record["sender_id"]),
        recipient_id=int(record["recipient_id"]),
        body=record["body"],
        server_ts=int(record["server_ts"]),
        delivered_at=record["delivered_at"],
        sender=record.get("sender"),
        recipient=record.get("recipient"),
    )


async def get_by_message_ids(message_ids: Sequence[str]) -> dict[str, StoredMessage]:
    """Stored rows for these ids (committed ones), keyed by ``message_id``."""
    if not message_ids:
        return {}
    marks = ",".join("?" * len(message_ids))
    rows = await _rows(f"SELECT {_COLUMNS} FROM messages m WHERE m.message_id IN ({marks})", message_ids)
    return {row["message_id"]: _stored(row) for row in rows}


async def get_for_party(message_id: str, user_id: int) -> StoredMessage | None:
    """The message if ``user_id`` sent or received it, else ``None``."""
    sql = f"{_WITH_NAMES} WHERE m.message_id = ? AND (m.sender_id = ? OR m.recipient_id = ?)"
    rows = await _rows(sql, [message_id, user_id, user_id])
    return _stored(rows[0]) if rows else None


async def list_for_user(user_id: int, since: int, limit: int) -> list[StoredMessage]:
    """The user's messages (sent and received) with ``seq > since``, ascending, at most ``limit``."""
    # Two index range scans, (recipient_id, id) and (sender_id, id), merged.
    sql = (
        f"{_WITH_NAMES} WHERE m.id IN ("
        "SELECT id FROM (SELECT id FROM messages WHERE recipient_id = ? AND id > ? "
        "ORDER BY id LIMIT ?) a UNION ALL "
        "SELECT id FROM (SELECT id FROM messages WHERE sender_id = ? AND id > ? "
        "ORDER BY id LIMIT ?) b) ORDER BY m.id LIMIT ?"
    )
    rows = await _rows(sql, [user_id, since, limit, user_id, since, limit, limit])
    return [_stored(row) for row in rows]


async def list_received(user_id: int, since: int, limit: int) -> list[StoredMessage]:
    """Messages received by ``user_id`` with ``seq > since``, ascending (for push after a signal)."""
    sql = f"{_WITH_NAMES} WHERE m.recipient_id = ? AND m.id > ? ORDER BY m.id LIMIT ?"
    rows = await _rows(sql, [user_id, since, limit])
    return [_stored(row) for row in rows]


async def max_seq() -> int:
    """The highest seq handed out so far (0 when empty)."""
    rows = await db.connection().execute_query_dict("SELECT MAX(id) AS top FROM messages")
    return int(rows[0]["top"] or 0) if rows else 0


async def mark_delivered(message_id: str, recipient_id: int, when_ms: int) -> bool:
    """Set ``delivered_at`` once (the first time wins); False if no such message for this recipient."""
    sql = (
        "UPDATE messages SET delivered_at = COALESCE(delivered_at, ?) "
        "WHERE message_id = ? AND recipient_id = ?"
    )
    conn = db.connection()
    count, _ = await conn.execute_query(db.sql_for(sql, conn), [when_ms, message_id, recipient_id])
    return count > 0


async def find_user_id(username: str) -> int | None:
    """The id of the user with this (lowercased) username, or ``None``."""
    rows = await _rows("SELECT id FROM users WHERE username = ?", [username])
    return int(rows[0]["id"]) if rows else None


async def recipients_between(after: int, upto: int) -> list[tuple[int, int]]:
    """(seq, recipient_id) of every message with ``after < seq <= upto`` (a primary-key range)."""
    rows = await _rows("SELECT id, recipient_id FROM messages WHERE id > ? AND id <= ?", [after, upto])
    return [(int(row["id"]), int(row["recipient_id"])) for row in rows]


async def received_after(cursors: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Per user id: how many messages it received with seq above its cursor, and the newest
    such seq. One query for all of them (an index probe per user); users with none are left out."""
    if not cursors:
        return {}
    conn = db.connection()
    if db.dialect() == "postgres":
        rows = await conn.execute_query_dict(
            "SELECT u.uid, s.n, s.top FROM unnest($1::bigint[], $2::bigint[]) AS u(uid, cur) "
            "CROSS JOIN LATERAL (SELECT COUNT(*) AS n, MAX(m.id) AS top FROM messages m "
            "WHERE m.recipient_id = u.uid AND m.id > u.cur) s WHERE s.n > 0",
            [list(cursors), list(cursors.values())],
        )
    else:
        found: list[Any] = []
        items = list(cursors.items())
        for start in range(0, len(items), 400):  # 2 parameters a user, under SQLite's 999
            chunk = items[start : start + 400]
            values = ",".join(["(?, ?)"] * len(chunk))
            found += await conn.execute_query_dict(
                f"WITH u(uid, cur) AS (VALUES {values}) SELECT u.uid AS uid, COUNT(*) AS n, "
                "MAX(m.id) AS top FROM u JOIN messages m ON m.recipient_id = u.uid AND m.id > u.cur "
                "GROUP BY u.uid",
                [value for pair in chunk for value in pair],
            )
        rows = found
    return {int(row["uid"]): (int(row["n"]), int(row["top"])) for row in rows}
