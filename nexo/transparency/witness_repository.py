"""Every query of the witness client: cosignatures, per-witness state and the submitter lease."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from nexo.platform import db
from nexo.transparency.cosignature import Cosignature

LEASE = "witness-submitter"


async def _query(sql: str, values: list[Any] | None = None, conn: BaseDBAsyncClient | None = None) -> Any:
    conn = conn or db.connection()
    _, rows = await conn.execute_query(db.sql_for(sql, conn), values or [])
    return rows


async def take_lease(holder: str, now_ms: int, until_ms: int) -> bool:
    """Hold the submitter lease until ``until_ms`` if it is free, expired or already ours."""
    async with in_transaction() as conn:
        await _query(
            "INSERT INTO witness_lease (name, holder, until_ms) VALUES (?, ?, 0) "
            "ON CONFLICT (name) DO NOTHING",
            [LEASE, holder],
            conn,
        )
        rows = await conn.execute_query_dict(
            db.sql_for(
                "UPDATE witness_lease SET holder = ?, until_ms = ? "
                "WHERE name = ? AND (holder = ? OR until_ms < ?) RETURNING holder",
                conn,
            ),
            [holder, until_ms, LEASE, holder, now_ms],
        )
    return bool(rows)


async def release_lease(holder: str) -> None:
    await _query("UPDATE witness_lease SET until_ms = 0 WHERE name = ? AND holder = ?", [LEASE, holder])


async def states() -> dict[str, dict[str, Any]]:
    conn = db.connection()
    rows = await conn.execute_query_dict(
        "SELECT name, size, cosigned_index, last_attempt_ms, last_success_ms, last_error, last_error_ms, "
        "failures FROM witness_states"
    )
    return {str(row["name"]): dict(row) for row in rows}


def failing(state: dict[str, Any]) -> bool:
    """Whether a witness's latest submission failed (a state row of :func:`states`)."""
    return bool(state["last_error"]) and int(state["last_error_ms"]) >= int(state["last_success_ms"])


async def record_success(
    name: str, size: int, sth_index: int, cosigs: Iterable[Cosignature], now_ms: int
) -> None:
    """Store the cosignatures with the STH they cover and what the witness now holds, atomically."""
    async with in_transaction() as conn:
        for cosig in cosigs:
            await _query(
                "INSERT INTO sth_cosignatures (sth_index, witness, key_id, timestamp, signature) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sth_index, witness) DO NOTHING",
                [sth_index, cosig.name, cosig.key_id, cosig.timestamp, cosig.signature],
                conn,
            )
        await _upsert(
            conn, name, size=size, cosigned_index=sth_index, last_attempt_ms=now_ms, last_success_ms=now_ms
        )


async def record_size(name: str, size: int, now_ms: int) -> None:
    """The witness said (409) it holds ``size``."""
    async with in_transaction() as conn:
        await _upsert(conn, name, size=size, last_attempt_ms=now_ms)


async def record_failure(name: str, error: str, now_ms: int) -> None:
    async with in_transaction() as conn:
        await _upsert(conn, name, last_attempt_ms=now_ms, last_error=error[:500], last_error_ms=now_ms)
        await _query("UPDATE witness_states SET failures = failures + 1 WHERE name = ?", [name], conn)


async def _upsert(conn: BaseDBAsyncClient, name: str, **values: Any) -> None:
    await _query(
        "INSERT INTO witness_states (name, size, cosigned_index, last_attempt_ms, last_success_ms, "
        "last_error_ms, failures) VALUES (?, 0, -1, 0, 0, 0, 0) ON CONFLICT (name) DO NOTHING",
        [name],
        conn,
    )
    assignments = ", ".join(f"{column} = ?" for column in values)
    await _query(f"UPDATE witness_states SET {assignments} WHERE name = ?", [*values.values(), name], conn)


async def cosignatures(first: int, last: int) -> dict[int, list[Cosignature]]:
    """Stored cosignatures of STHs ``first..last`` (inclusive), by STH index."""
    rows = await _query(
        "SELECT sth_index, witness, key_id, timestamp, signature FROM sth_cosignatures "
        "WHERE sth_index >= ? AND sth_index <= ? ORDER BY sth_index, witness",
        [first, last],
    )
    found: dict[int, list[Cosignature]] = {}
    for row in rows:
        found.setdefault(int(row[0]), []).append(
            Cosignature(str(row[1]), bytes(row[2]), int(row[3]), bytes(row[4]))
        )
    return found


async def newest_cosigned(witnesses: list[str], quorum: int, since: int) -> int | None:
    """The newest STH index at or after ``since`` cosigned by at least ``quorum`` of ``witnesses``."""
    marks = ",".join("?" * len(witnesses))
    rows = await _query(
        f"SELECT sth_index FROM sth_cosignatures WHERE sth_index >= ? AND witness IN ({marks}) "
        "GROUP BY sth_index HAVING COUNT(*) >= ? ORDER BY sth_index DESC LIMIT 1",
        [since, *witnesses, quorum],
    )
    return int(rows[0][0]) if rows else None
