"""Operations: the runbook's checks and the SQLite ↔ PostgreSQL transfer as ``nexo`` commands."""
