"""Benchmark the tlog-tiles read API: full tiles served per second by one worker.

Grows a log of ``--leaves`` (default 65,536: 256 full level-0 tiles and entry bundles,
one full level-1 tile) straight into the database (tests/support/log_writer.py), starts one
worker and keeps ``--connections`` keep-alive GETs of one full tile busy for
``--seconds`` (tests/load/bench_health.py's load client), for a level-0 hash tile,
the level-1 tile, an entry bundle (as is, and gzipped for ``Accept-Encoding: gzip``)
and, as the same-minute reference, ``/api/health`` (no database work, not rate limited).
Each path is warmed for a second first (the worker's tile cache, the first requests
after the log was grown). Prints requests/s, p50/p99 and the server's CPU per request
(all its processes, from /proc: the figure that does not depend on what else the
shared machine runs; the load client's CPU is not in it).

    python -m tests.load.bench_tiles
    python -m tests.load.bench_tiles --backend postgres --connections 64 --client-processes 2
    python -m tests.load.bench_tiles --compare-python ../old/.venv/bin/python --rounds 4   # A/B, interleaved

Only 127.0.0.1 is ever targeted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from contracts.server import LocalServer, random_secret, scratch_postgres
from tests.load.bench_health import measure
from tests.load.procstat import session_cpu_seconds
from tests.support.log_writer import Tree, grow

FAST_LIMITS = {"NEXO_RATE_LIMIT": "100000000/minute", "NEXO_AUTH_RATE_LIMIT": "1000000/minute"}
GZIP = {"Accept-Encoding": "gzip"}
#: (label, path, request headers)
RUNS: list[tuple[str, str, dict[str, str]]] = [
    ("/tlog/tile/0/137", "/tlog/tile/0/137", {}),
    ("/tlog/tile/1/000", "/tlog/tile/1/000", {}),
    ("/tlog/tile/entries/137", "/tlog/tile/entries/137", {}),
    ("/tlog/tile/entries/137 gzip", "/tlog/tile/entries/137", GZIP),
    ("/api/health (reference)", "/api/health", {}),
]


def _run(
    server: LocalServer, args: argparse.Namespace, path: str, headers: dict[str, str]
) -> tuple[float, float]:
    """One measurement: (requests/s, server CPU µs per request); prints its line."""
    session = server.process.pid if server.process else None
    cpu = sum(session_cpu_seconds(session))
    figures = measure(
        "127.0.0.1", server.port, args.connections, args.seconds, args.client_processes, path, headers
    )
    cpu_us = (sum(session_cpu_seconds(session)) - cpu) / figures["requests"] * 1e6
    print(
        f"{figures['rps']:>7.0f} req/s at {args.connections} connections, p50 {figures['p50_ms']:.2f} ms, "
        f"p99 {figures['p99_ms']:.2f} ms, server CPU {cpu_us:.0f} us/request",
        flush=True,
    )
    return figures["rps"], cpu_us


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--leaves", type=int, default=65_536)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--compare-python",
        help="also start a server with this interpreter (another checkout's .venv/bin/python: its code) "
        "and alternate the two, run by run",
    )
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each path (and server)")
    args = parser.parse_args()
    pythons = {"this": sys.executable}
    if args.compare_python:
        pythons["other"] = args.compare_python
    with contextlib.ExitStack() as stack:
        servers: dict[str, LocalServer] = {}
        for name, python in pythons.items():
            env = {**FAST_LIMITS, "JWT_SECRET": random_secret()}
            if args.backend == "postgres":
                env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexo-bench-tiles-")))
            server = stack.enter_context(LocalServer(data_dir, env, workers=1, python=python))
            started = time.perf_counter()
            grow(server, Tree(), args.leaves)
            servers[name] = server
            print(
                f"full tiles ({name}: {python}; {args.backend}, 1 worker, {args.leaves} leaves grown in "
                f"{time.perf_counter() - started:.1f}s)"
            )
        for server in servers.values():
            for _, path, headers in RUNS:  # warm: the tile caches, the first requests after the growth
                measure("127.0.0.1", server.port, args.connections, 1.0, args.client_processes, path, headers)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for label, path, headers in RUNS:
                for name in order:
                    print(f"  {name:<5} {label:<28} ", end="")
                    results.setdefault((name, label), []).append(_run(servers[name], args, path, headers))
        if args.rounds > 1:
            print("medians:")
            for (name, label), runs in results.items():
                print(
                    f"  {name:<5} {label:<28} {statistics.median(r for r, _ in runs):>7.0f} req/s "
                    f"(min {min(r for r, _ in runs):.0f}, max {max(r for r, _ in runs):.0f}), "
                    f"server CPU {statistics.median(c for _, c in runs):.0f} us/request"
                )


if __name__ == "__main__":
    main()
