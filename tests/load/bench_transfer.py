"""Benchmark ``nexo db export`` / ``nexo db import``: rows per second, SQLite → PostgreSQL.

Fills a fresh SQLite database with ``--rows`` synthetic rows in every table but the
log's (the generator of ``tests/ops/test_transfer.py``), then times the real commands as
subprocesses: export from SQLite, import into a scratch PostgreSQL database (verify
counts, digests and chain included), export from PostgreSQL.

    python -m tests.load.bench_transfer [--rows 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from contracts.server import run_nexo, scratch_postgres
from tests.ops.test_transfer import _env, _settings, populate


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    result = run_nexo(args, env, cwd, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows per table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, scratch_postgres() as pg_url:
        tmp = Path(tmp_name)
        counts = asyncio.run(populate(_settings(tmp / "source"), rows=args.rows))
        total = sum(counts.values())
        export = tmp / "e.jsonl.gz"
        seconds = _timed(["db", "export", "--out", str(export)], _env(tmp / "source"), tmp)
        size = export.stat().st_size
        print("machine shared by other work; times include interpreter start (~1 s)")
        print(f"{total} rows in {len(counts)} tables, export file {size / 1e6:.1f} MB")
        print(f"export  sqlite   {seconds:6.1f} s  {total / seconds:8.0f} rows/s")
        seconds = _timed(["db", "import", str(export)], _env(tmp / "pg", pg_url), tmp)
        print(f"import  postgres {seconds:6.1f} s  {total / seconds:8.0f} rows/s (verify + audit included)")
        seconds = _timed(["db", "export", "--out", str(tmp / "f.jsonl.gz")], _env(tmp / "pg", pg_url), tmp)
        print(f"export  postgres {seconds:6.1f} s  {total / seconds:8.0f} rows/s")


if __name__ == "__main__":
    main()
