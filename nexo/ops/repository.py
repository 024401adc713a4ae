"""Queries the operations commands run against the configured database."""

from __future__ import annotations

from nexo.platform.db import connection

#: The runbook's duplicate query ("WebSocket Duplicate Messages"), verbatim but for the alias.
DUPLICATES_SQL = "SELECT message_id, COUNT(*) AS copies FROM messages GROUP BY message_id HAVING COUNT(*) > 1"


async def find_duplicate_message_ids() -> list[tuple[str, int]]:
    """``(message_id, copies)`` for every message id stored more than once; normally empty."""
    rows = await connection().execute_query_dict(DUPLICATES_SQL + " ORDER BY message_id")
    return [(str(row["message_id"]), int(row["copies"])) for row in rows]
