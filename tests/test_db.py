"""Database wiring on the real SQLite file: the runbook's pragmas are in force."""

from __future__ import annotations

from pathlib import Path

from nexo import db
from nexo.config import Settings


async def test_sqlite_pragmas_are_applied(tmp_path: Path) -> None:
    settings = Settings(jwt_secret="x" * 32, data_dir=tmp_path / "fresh" / "data")
    await db.init_db(settings)
    try:
        pragmas = await db.read_pragmas()
    finally:
        await db.close_db()
    assert str(pragmas["journal_mode"]).lower() == "wal"
    assert int(pragmas["synchronous"]) == 1  # NORMAL
    assert int(pragmas["cache_size"]) == -2000
    assert int(pragmas["temp_store"]) == 2  # MEMORY
    assert int(pragmas["busy_timeout"]) == 5000
    assert settings.sqlite_path.exists()
