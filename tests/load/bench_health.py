"""Benchmark ``GET /api/health``: p50/p99 latency and requests per second.

Starts its own server (SQLite by default, ``--backend postgres`` for a scratch
PostgreSQL database) on 127.0.0.1, sends the runbook's 5 warm-up requests, then
measures at each concurrency in ``--connections`` (default 1 and 50). Clients
are raw keep-alive HTTP/1.1 connections spread over ``--client-processes``
processes, so the load generator costs as little CPU as possible; it still
shares the machine's cores with the server, which the report says.

    python -m tests.load.bench_health                       # SQLite
    python -m tests.load.bench_health --backend postgres    # PostgreSQL
    python -m tests.load.bench_health --base-url http://127.0.0.1:5000   # a running server

Only 127.0.0.1 is ever targeted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from contracts.server import LocalServer, scratch_postgres


def http_get(path: str, headers: dict[str, str] | None = None) -> bytes:
    """One keep-alive HTTP/1.1 GET, as bytes on the wire."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n{extra}\r\n".encode()


async def _one_connection(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            status = head[9:12]
            if status == b"429" or status.startswith(b"5"):
                raise RuntimeError(f"the server answered {head.splitlines()[0]!r}")
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _client_process(
    host: str, port: int, request: bytes, connections: int, start_at: float, seconds: float, out: object
) -> None:
    async def run() -> list[float]:
        latencies: list[float] = []
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(_one_connection(host, port, request, deadline, latencies) for _ in range(connections))
        )
        return latencies

    out.put(asyncio.run(run()))  # type: ignore[attr-defined]


def measure(
    host: str,
    port: int,
    connections: int,
    seconds: float,
    processes: int = 1,
    path: str = "/api/health",
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """Keep ``connections`` keep-alive GETs of ``path`` busy for ``seconds``; latency figures in ms."""
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    queue: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
    start_at = time.time() + 0.5
    workers = [
        multiprocessing.Process(
            target=_client_process, args=(host, port, http_get(path, headers), n, start_at, seconds, queue)
        )
        for n in shares
    ]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    for _ in workers:
        latencies.extend(queue.get(timeout=seconds + 60))
    for worker in workers:
        worker.join()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "connections": connections,
        "requests": len(ms),
        "rps": len(ms) / seconds,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
    }


def warm_up(host: str, port: int, count: int = 5) -> None:
    import httpx

    for _ in range(count):
        httpx.get(f"http://{host}:{port}/api/health", timeout=5).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--base-url", help="measure a server already running on 127.0.0.1")
    parser.add_argument("--connections", default="1,50", help="comma list of concurrencies")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--client-processes", type=int, default=1)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        if args.base_url:
            parsed = urlparse(args.base_url)
            if parsed.hostname not in {"127.0.0.1", "localhost", "::1"}:
                raise SystemExit("this benchmark only targets 127.0.0.1")
            host, port, label = "127.0.0.1", parsed.port or 80, args.base_url
        else:
            env = {}
            if args.backend == "postgres":
                env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            server = stack.enter_context(LocalServer(data_dir, env))
            host, port, label = "127.0.0.1", server.port, f"{args.backend}, one worker"
        warm_up(host, port)
        print(f"GET /api/health on {label}; {os.cpu_count()} cores shared by server and client")
        print(f"{'conns':>6} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for connections in (int(c) for c in args.connections.split(",")):
            r = measure(host, port, connections, args.seconds, args.client_processes)
            print(
                f"{connections:>6} {int(r['requests']):>9} {r['rps']:>9.0f} "
                f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}"
            )


if __name__ == "__main__":
    main()
