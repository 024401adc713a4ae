"""The audit's source for the local database (SQLite or DATABASE_URL), read in pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nexo.transparency import merkle
from nexo.transparency import sth as sth_mod
from nexo.transparency.audit.checks import RawSTH, run_audit
from nexo.transparency.audit.report import anomalies_line
from nexo.transparency.cosignature import Cosignature


class LocalSource:
    """The local database (SQLite or DATABASE_URL), read in pages."""

    PAGE = 20_000

    def __init__(self, key_path: Path | None) -> None:
        self.key_path = key_path

    async def public_key(self) -> bytes:
        from nexo.transparency.keys import read_key

        if self.key_path is None or not self.key_path.exists():
            raise FileNotFoundError(
                f"the log signing key {self.key_path} is not here: pass the published key with "
                "--public-key BASE64 (GET /api/log/key)"
            )
        return sth_mod.public_key_bytes(read_key(self.key_path))

    async def totals(self) -> tuple[int, int]:
        from nexo.transparency import repository

        latest = await repository.latest_sth()
        return (latest.index + 1 if latest else 0), await repository.leaf_count()

    async def sths(self) -> AsyncIterator[RawSTH]:
        from nexo.transparency import repository, witness_repository

        window: dict[int, list[Cosignature]] = {}
        window_end = -1
        async for sth, stated_hash in repository.iter_sths(self.PAGE):
            if sth.index > window_end:
                window_end = sth.index + self.PAGE - 1
                window = await witness_repository.cosignatures(sth.index, window_end)
            yield RawSTH(sth, stated_hash, tuple(window.get(sth.index, ())))

    async def leaves(self) -> AsyncIterator[tuple[int, bytes, bytes | None]]:
        from nexo.transparency import repository

        async for entry in repository.iter_leaves(self.PAGE):
            yield entry

    async def consistency(self, first: int, second: int) -> list[bytes]:
        from nexo.transparency import repository

        ranges = merkle.consistency_ranges(first, second)
        nodes = await repository.get_nodes(merkle.nodes_for(ranges))
        return merkle.build_path(ranges, nodes)


async def audit_database_summary(settings: Any) -> str | None:
    """Full audit of the open database; ``None`` when clean (for ``nexo db import``).

    Without the signing key file the rest is still checked, and the missing key is reported.
    """
    key_path = settings.signing_key_path
    source = LocalSource(key_path)
    report = await run_audit(source, check_signatures=key_path.exists())
    if report.sths == 0 and report.leaves == 0:
        # A database that never held a log (no STH 0 yet): nothing to verify after an import.
        return None
    problems = anomalies_line(report)
    if not key_path.exists():
        missing = f"no log signing key at {key_path}: copy it with the data (signatures unchecked)"
        return missing + (f"; {problems}" if problems else "")
    return problems
