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
import asyncio
import contextlib
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from contracts.server import DEFAULT_REDIS_URL, LocalServer


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".encode()


async def _connection(port: int, request: bytes, deadline: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if head.startswith(b"HTTP/1.1 429"):
                raise RuntimeError("the budget was spent: raise NEXO_RATE_LIMIT")
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def measure(port: int, path: str, connections: int, seconds: float) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms)."""
    request = _request(path)
    await _connection(port, request, time.perf_counter() + 0.5, [])  # warm-up
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, request, deadline, latencies) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000


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
                        rps, p50, p99 = asyncio.run(measure(server.port, path, connections, args.seconds))
                        print(f"{storage:<8} {path:<18} {connections:>5} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f}")


if __name__ == "__main__":
    main()
