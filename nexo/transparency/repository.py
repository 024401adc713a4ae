"""Every query of the transparency log (raw SQL on the hot path, both dialects).

Tables: ``sths`` (the chain), ``log_leaves`` (leaf bytes by index) and
``log_nodes`` (complete-subtree hashes, see ``models.py``). A proof or root
reads O(log n) nodes by primary key; an append writes O(batch) leaves and
O(batch + log n) nodes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from nexo.platform import counters, db
from nexo.transparency.models import node_key, node_of_key
from nexo.transparency.sth import STH_FIELDS, SignedTreeHead, TreeHead

#: ``pg_advisory_xact_lock`` key of the sequencer ("nexo-log").
SEQUENCER_LOCK_ID = 0x6E65786F2D6C6F67 & 0x7FFFFFFFFFFFFFFF

#: What :func:`sth_from_row` reads ("index" is a keyword: quoted).
_STH_COLUMNS = ", ".join('"index"' if name == "index" else name for name in STH_FIELDS[:-1])
#: The latest STH, as :func:`sth_from_row` reads it.
LATEST_STH = f'SELECT {_STH_COLUMNS} FROM sths ORDER BY "index" DESC LIMIT 1'
#: One row of ``sths`` (``?`` placeholders), the values from :func:`sth_row`.
INSERT_STH = f"INSERT INTO sths ({_STH_COLUMNS}, sth_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def sth_row(sth: SignedTreeHead) -> tuple[int, int, bytes, int, bytes, str, bytes, bytes]:
    """The values of ``sth``'s row, in the order of :data:`STH_FIELDS`."""
    return (
        sth.index,
        sth.tree_size,
        sth.root_hash,
        sth.timestamp_ms,
        sth.prev_sth_hash,
        sth.origin,
        sth.signature,
        sth.sth_hash,
    )


def sth_from_row(row: Any) -> SignedTreeHead:
    """The STH of a row whose first columns are those of :data:`STH_FIELDS` but ``sth_hash``."""
    return SignedTreeHead(
        TreeHead(
            origin=str(row[5]),
            index=int(row[0]),
            tree_size=int(row[1]),
            root_hash=bytes(row[2]),
            timestamp_ms=int(row[3]),
            prev_sth_hash=bytes(row[4]),
        ),
        bytes(row[6]),
    )


async def _query(sql: str, values: list[Any] | None = None, conn: BaseDBAsyncClient | None = None) -> Any:
    conn = conn or db.connection()
    _, rows = await conn.execute_query(db.sql_for(sql, conn), values or [])
    return rows


async def lock_sequencer(conn: BaseDBAsyncClient) -> None:
    """Make this transaction the only sequencer until it ends.

    PostgreSQL: a transaction-scoped advisory lock, so several workers and
    instances take turns. SQLite: a write first, which takes the database's
    single write lock for the rest of the transaction.
    """
    if conn.capabilities.dialect == "postgres":
        await conn.execute_query(f"SELECT pg_advisory_xact_lock({SEQUENCER_LOCK_ID})")
    else:
        await conn.execute_query("UPDATE counters SET value = value WHERE name = 'sths'")


async def latest_sth(conn: BaseDBAsyncClient | None = None) -> SignedTreeHead | None:
    rows = await _query(LATEST_STH, conn=conn)
    return sth_from_row(rows[0]) if rows else None


async def get_sth(index: int) -> SignedTreeHead | None:
    rows = await _query(f'SELECT {_STH_COLUMNS} FROM sths WHERE "index" = ?', [index])
    return sth_from_row(rows[0]) if rows else None


async def list_sths(start: int, limit: int) -> list[SignedTreeHead]:
    rows = await _query(
        f'SELECT {_STH_COLUMNS} FROM sths WHERE "index" >= ? ORDER BY "index" LIMIT ?',
        [start, limit],
    )
    return [sth_from_row(row) for row in rows]


async def iter_sths(batch: int = 5000) -> AsyncIterator[tuple[SignedTreeHead, bytes]]:
    """Every STH in index order with its *stored* ``sth_hash`` (for the audit), ``batch`` per query."""
    last = -1
    while True:
        rows = await _query(
            f'SELECT {_STH_COLUMNS}, sth_hash FROM sths WHERE "index" > ? ORDER BY "index" LIMIT ?',
            [last, batch],
        )
        if not rows:
            return
        for row in rows:
            yield sth_from_row(row), bytes(row[7])
        last = int(rows[-1][0])


async def iter_leaves(batch: int = 5000) -> AsyncIterator[tuple[int, bytes, bytes]]:
    """Every leaf in index order with its stored leaf hash (``b""`` when missing), for the audit."""
    last = -1
    while True:
        rows = await _query(
            "SELECT l.leaf_index, l.leaf, n.hash FROM log_leaves l "
            "LEFT JOIN log_nodes n ON n.key = l.leaf_index "
            "WHERE l.leaf_index > ? ORDER BY l.leaf_index LIMIT ?",
            [last, batch],
        )
        if not rows:
            return
        for row in rows:
            yield int(row[0]), bytes(row[1]), (bytes(row[2]) if row[2] is not None else b"")
        last = int(rows[-1][0])


async def add_sth(conn: BaseDBAsyncClient, sth: SignedTreeHead) -> None:
    await conn.execute_query(db.sql_for(INSERT_STH, conn), list(sth_row(sth)))


async def get_nodes(
    wanted: Iterable[tuple[int, int]], conn: BaseDBAsyncClient | None = None
) -> dict[tuple[int, int], bytes]:
    """The stored hashes of these complete subtrees (missing ones are absent)."""
    keys = sorted({node_key(level, index) for level, index in wanted})
    if not keys:
        return {}
    conn = conn or db.connection()
    if conn.capabilities.dialect == "postgres":
        rows = await _query("SELECT key, hash FROM log_nodes WHERE key = ANY($1::bigint[])", [keys], conn)
    else:
        marks = ",".join("?" * len(keys))
        rows = await _query(f"SELECT key, hash FROM log_nodes WHERE key IN ({marks})", keys, conn)
    return {node_of_key(int(row[0])): bytes(row[1]) for row in rows}


async def append(
    conn: BaseDBAsyncClient, first_index: int, leaves: Sequence[bytes], nodes: Mapping[tuple[int, int], bytes]
) -> None:
    """Write a batch of leaves (from ``first_index``) and the subtree hashes they complete."""
    await conn.execute_many(
        db.sql_for("INSERT INTO log_leaves (leaf_index, leaf) VALUES (?, ?)", conn),
        [[first_index + offset, leaf] for offset, leaf in enumerate(leaves)],
    )
    await conn.execute_many(
        db.sql_for("INSERT INTO log_nodes (key, hash) VALUES (?, ?)", conn),
        [[node_key(level, index), value] for (level, index), value in nodes.items()],
    )


async def bump_sth_counters(conn: BaseDBAsyncClient, sth: SignedTreeHead) -> None:
    """Same transaction as the STH row: health's ``sth_count`` and latest timestamp.

    One statement while both counters exist (they are made with STH 0).
    """
    # execute_query_dict: Tortoise's asyncpg client drops the RETURNING rows of execute_query.
    rows = await conn.execute_query_dict(db.sql_for(_BUMP_STH_COUNTERS, conn), [sth.timestamp_ms])
    bumped = {str(row["name"]) for row in rows}
    if "sths" not in bumped:
        await counters.add("sths", 1, using=conn)
    if "sth_latest_timestamp_ms" not in bumped:
        await counters.set_value("sth_latest_timestamp_ms", sth.timestamp_ms, using=conn)


_BUMP_STH_COUNTERS = (
    "UPDATE counters SET value = CASE WHEN name = 'sths' THEN value + 1 ELSE ? END "
    "WHERE name IN ('sths', 'sth_latest_timestamp_ms') RETURNING name"
)


async def entries(start: int, end: int) -> list[tuple[int, bytes]]:
    """Leaves ``start..end`` inclusive, by index."""
    rows = await _query(
        "SELECT leaf_index, leaf FROM log_leaves WHERE leaf_index >= ? AND leaf_index <= ? "
        "ORDER BY leaf_index",
        [start, end],
    )
    return [(int(row[0]), bytes(row[1])) for row in rows]


async def leaf_count() -> int:
    rows = await _query("SELECT COUNT(*) FROM log_leaves")
    return int(rows[0][0])


async def node_count() -> int:
    rows = await _query("SELECT COUNT(*) FROM log_nodes")
    return int(rows[0][0])


async def leaves_at(indexes: Iterable[int]) -> dict[int, bytes]:
    """The leaves at these indexes (absent ones are left out)."""
    wanted = sorted(set(indexes))
    found: dict[int, bytes] = {}
    for offset in range(0, len(wanted), 500):
        chunk = wanted[offset : offset + 500]
        conn = db.connection()
        if conn.capabilities.dialect == "postgres":
            rows = await _query(
                "SELECT leaf_index, leaf FROM log_leaves WHERE leaf_index = ANY($1::bigint[])", [chunk], conn
            )
        else:
            marks = ",".join("?" * len(chunk))
            rows = await _query(
                f"SELECT leaf_index, leaf FROM log_leaves WHERE leaf_index IN ({marks})", chunk
            )
        found.update({int(row[0]): bytes(row[1]) for row in rows})
    return found


async def node_run(level: int, first: int, count: int) -> list[bytes]:
    """The hashes of nodes ``(level, first) .. (level, first + count - 1)`` in order: one range read
    by primary key (a tile). Missing nodes are left out, so a short list means "not stored"."""
    rows = await _query(
        "SELECT hash FROM log_nodes WHERE key >= ? AND key < ? ORDER BY key",
        [node_key(level, first), node_key(level, first + count)],
    )
    return [bytes(row[0]) for row in rows]


async def leaf_run(first: int, count: int) -> list[bytes]:
    """Leaves ``first .. first + count - 1`` in order (an entry bundle), one range read."""
    rows = await _query(
        "SELECT leaf FROM log_leaves WHERE leaf_index >= ? AND leaf_index < ? ORDER BY leaf_index",
        [first, first + count],
    )
    return [bytes(row[0]) for row in rows]
