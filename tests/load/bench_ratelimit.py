"""Benchmark the rate limiter's cost per request: in-process storage vs Redis.

Starts two servers on 127.0.0.1 (SQLite, one worker): one limiting in process,
one with ``REDIS_URL`` (a unique key prefix). On each it measures, over raw
keep-alive HTTP/1.1 connections, p50/p99 latency and requests per second of

- ``GET /api/health`` (exempt: the baseline without the limiter), and
- ``GET /api/rate-probe`` (an unrouted path: the limiter runs, then a 404),

with a budget too large to be spent (per second, so the moving-window log stays
short), so every probe is allowed and counted.
The difference is the limiter's cost. The machine is shared by server and load
generator; the report says so.

    python -m tests.load.bench_ratelimit [--seconds 5] [--connections 1,20]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
from pathlib import Path

from contracts.server import DEFAULT_REDIS_URL, LocalServer
from tests.load.bench_health import measure as measure_get


def measure(port: int, connections: int, seconds: float, path: str) -> dict[str, float]:
    return measure_get("127.0.0.1", port, connections, seconds, path=path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", default="1,20")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    print("machine shared by server and load generator (127.0.0.1); SQLite, one worker")
    print(f"{'storage':<8} {'path':<18} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for storage in ("memory", "redis"):
            env = {"NEXO_RATE_LIMIT": "1000000/second", "NEXO_ACCESS_LOG": "0", "DATABASE_URL": ""}
            if storage == "redis":
                env |= {"REDIS_URL": args.redis_url, "NEXO_REDIS_PREFIX": f"bench-{secrets.token_hex(4)}"}
            with LocalServer(Path(tmp) / storage, env) as server:
                for path in ("/api/health", "/api/rate-probe"):
                    for connections in counts:
                        measure(server.port, 1, 0.5, path=path)  # warm-up
                        r = measure(server.port, connections, args.seconds, path=path)
                        print(
                            f"{storage:<8} {path:<18} {connections:>5} {r['rps']:>9.0f} "
                            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
                        )


if __name__ == "__main__":
    main()
