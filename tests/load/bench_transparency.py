"""Benchmark the transparency log: registrations/s, proof latency at 1M leaves, audit time.

Three parts (``--part``, default all):

- ``register``: 50 concurrent clients (raw keep-alive HTTP/1.1) each register
  device keys as fast as answers come back for ``--seconds``; every answer
  arrives only once its leaf is in a signed, committed STH, so the request
  latency *is* the request→signed-STH latency. Prints registrations/s and
  p50/p99. Afterwards it checks the chain with ``nexo audit``.
- ``proofs``: bulk-loads ``--leaves`` (default 1,000,000) leaves straight into
  a fresh database (leaves, every complete-subtree hash, one signed STH per
  ``--sth-every`` leaves), starts a server on it and times random inclusion
  and consistency proofs: client round trip p50/p99 and the server's own time
  per request (from ``nexo_http_request_duration_seconds`` in ``/metrics``).
- ``audit``: times ``nexo audit`` on that bulk-loaded database.

    python -m tests.load.bench_transparency                          # SQLite, everything
    python -m tests.load.bench_transparency --backend postgres       # PostgreSQL
    python -m tests.load.bench_transparency --part register --workers 2 --backend postgres

Only 127.0.0.1 is ever targeted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from contracts.client import Account
from contracts.server import LocalServer, random_secret, scratch_postgres
from tests.load.procstat import session_cpu_seconds

FAST_LIMITS = {"NEXO_RATE_LIMIT": "100000000/minute", "NEXO_AUTH_RATE_LIMIT": "1000000/minute"}


def _percentile(sorted_ms: list[float], share: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * share))]


# -- registrations -----------------------------------------------------------------------------


async def _register_loop(
    port: int, tokens: list[str], deadline: float, latencies: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.perf_counter() < deadline:
            token = tokens[n % len(tokens)]
            n += 1
            body = json.dumps(
                {
                    "name": f"b{n}",
                    "public_key": base64.b64encode(os.urandom(32)).decode(),
                    "key_type": "ed25519",
                }
            ).encode()
            request = (
                b"POST /api/devices HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
                b"Content-Type: application/json\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            payload = await reader.readexactly(length)
            elapsed = time.perf_counter() - started
            if not head.startswith(b"HTTP/1.1 201"):
                errors.append(head.split(b"\r\n")[0].decode() + " " + payload[:200].decode(errors="replace"))
                continue
            latencies.append(elapsed)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _client_process(
    port: int, tokens: list[str], conns: int, start_at: float, seconds: float, out: Any
) -> None:
    async def run() -> tuple[list[float], list[str]]:
        latencies: list[float] = []
        errors: list[str] = []
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                _register_loop(port, tokens[i::conns] or tokens, deadline, latencies, errors)
                for i in range(conns)
            )
        )
        return latencies, errors

    out.put(asyncio.run(run()))


def bench_register(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    env = {**FAST_LIMITS, "JWT_SECRET": random_secret()}
    if args.sth_interval is not None:
        env["NEXO_STH_INTERVAL"] = str(args.sth_interval)
    if args.backend == "postgres":
        env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexo-bench-")))
    server = stack.enter_context(LocalServer(data_dir, env, workers=args.workers))
    accounts = [Account.create(server.base_url, prefix="bench") for _ in range(args.clients)]
    tokens = [a.access_token for a in accounts]
    # Warm up: a few registrations so every code path is loaded.
    for account in accounts[:5]:
        httpx.post(
            f"{server.base_url}/api/devices",
            json={"name": "w", "public_key": base64.b64encode(os.urandom(32)).decode(), "key_type": "x25519"},
            headers=account.headers,
            timeout=30,
        ).raise_for_status()
    processes = max(1, min(args.client_processes, args.clients))
    shares = [
        args.clients // processes + (1 if i < args.clients % processes else 0) for i in range(processes)
    ]
    queue: multiprocessing.Queue[tuple[list[float], list[str]]] = multiprocessing.Queue()
    start_at = time.time() + 0.5
    workers = []
    offset = 0
    for share in shares:
        part = tokens[offset : offset + share]
        offset += share
        workers.append(
            multiprocessing.Process(
                target=_client_process, args=(server.port, part, share, start_at, args.seconds, queue)
            )
        )
    before = httpx.get(f"{server.base_url}/api/sth/latest", timeout=10).json()
    session = server.process.pid if server.process else None
    cpu_before = sum(session_cpu_seconds(session))
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    errors: list[str] = []
    for _ in workers:
        got, errs = queue.get(timeout=args.seconds + 120)
        latencies += got
        errors += errs
    for worker in workers:
        worker.join()
    server_cpu = sum(session_cpu_seconds(session)) - cpu_before
    after = httpx.get(f"{server.base_url}/api/sth/latest", timeout=10).json()
    ms = sorted(x * 1000 for x in latencies)
    sths = after["index"] - before["index"]
    print(
        f"registrations ({args.backend}, {args.workers} worker(s), {args.clients} concurrent clients, "
        f"{args.seconds:.0f}s; {os.cpu_count()} cores shared by server, clients and other work)"
    )
    print(f"  registered          {len(ms)} ({len(errors)} errors)")
    print(f"  registrations/s     {len(ms) / args.seconds:.0f}")
    print(
        f"  request->signed STH p50 {statistics.median(ms):.1f} ms, p99 {_percentile(ms, 0.99):.1f} ms, "
        f"max {ms[-1]:.1f} ms"
    )
    interval = args.sth_interval if args.sth_interval is not None else 0.05  # NEXO_STH_INTERVAL default
    print(f"  STHs signed         {sths} (mean batch {len(ms) / max(sths, 1):.1f} leaves)")
    per_10k = sths * 10_000 / max(len(ms), 1)
    bound = f"bound {1 / interval:.0f}/s" if interval else "no bound"
    print(f"  STHs per 10,000 registrations {per_10k:.0f}; {sths / args.seconds:.1f} STHs/s ({bound})")
    print(
        f"  server CPU          {server_cpu / max(len(ms), 1) * 1e6:.0f} us per registration "
        f"({server_cpu / args.seconds:.2f} cores busy)"
    )
    if errors:
        print(f"  first error: {errors[0]}")
    server.stop()
    started = time.perf_counter()
    result = _audit(server)
    print(
        f"  nexo audit after the run: exit {result.returncode} in {time.perf_counter() - started:.1f}s: "
        f"{result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]}"
    )


def _audit(server: LocalServer) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{k: v for k, v in server.env.items() if k.startswith(("NEXO_", "DATABASE_URL"))}}
    env.setdefault("DATABASE_URL", "")
    return subprocess.run(
        [sys.executable, "-m", "nexo", "audit", "--quiet"],
        env=env,
        cwd=server.data_dir,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )


def bench_sequencer(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    """The log alone, in process: service.register -> sequencer -> signed STH, no HTTP or auth."""
    from nexo.app import prepare_storage
    from nexo.auth import repository as accounts
    from nexo.devices import service
    from nexo.platform import db
    from nexo.platform.config import Settings
    from nexo.transparency import repository
    from nexo.transparency.keys import load_signing_key
    from nexo.transparency.sequencer import Sequencer

    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexo-bench-seq-")))
    url = stack.enter_context(scratch_postgres()) if args.backend == "postgres" else None
    settings = Settings(jwt_secret="x" * 48, data_dir=data_dir, database_url=url)

    async def run() -> tuple[list[float], int]:
        await prepare_storage(settings)
        sequencer = Sequencer(load_signing_key(settings, await repository.latest_sth()))
        sequencer.start()
        # A registration is logged only for an existing account (RegisterWriter.claim).
        users = [await accounts.create_user(f"user{n}", "unused") for n in range(args.clients)]
        latencies: list[float] = []
        deadline = time.perf_counter() + args.seconds

        async def client(user_id: int, username: str) -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                key = base64.b64encode(os.urandom(32)).decode()
                await service.register(sequencer, user_id, username, "bench", key, "ed25519")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client(user.id, user.username) for user in users))
        await sequencer.stop()
        latest = await repository.latest_sth()
        await db.close_db()
        return latencies, latest.index if latest else 0

    latencies, sths = asyncio.run(run())
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"sequencer alone ({args.backend}, in process, {args.clients} concurrent submitters, "
        f"{args.seconds:.0f}s)"
    )
    print(
        f"  leaves/s {len(ms) / args.seconds:.0f}; submit->signed STH p50 {statistics.median(ms):.1f} ms, "
        f"p99 {_percentile(ms, 0.99):.1f} ms; {sths} STHs (mean batch {len(ms) / max(sths, 1):.1f})"
    )


# -- bulk load, proofs, audit ------------------------------------------------------------------


def bulk_load(settings_env: dict[str, str], data_dir: Path, leaves: int, sth_every: int) -> None:
    """Write a genuine log of ``leaves`` device events straight into the database."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: F401

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from nexo.transparency import merkle
    from nexo.transparency import sth as sth_mod
    from nexo.transparency.keys import read_key
    from nexo.transparency.models import node_key
    from nexo.transparency.repository import INSERT_STH, LATEST_STH, sth_from_row, sth_row

    # Let nexo create the schema, the key and STH 0 exactly as at first start.
    subprocess.run(
        [sys.executable, "-m", "nexo", "db", "push"],
        env={**os.environ, **settings_env},
        cwd=data_dir,
        check=True,
        capture_output=True,
    )
    key = read_key(Path(settings_env["NEXO_SIGNING_KEY_FILE"]))
    origin = "nexo.local/log"
    tree = merkle.MemoryTree()
    leaf_rows: list[tuple[int, bytes]] = []
    t0 = time.perf_counter()
    base_ms = int(time.time() * 1000) - leaves
    for i in range(leaves):
        leaf = json.dumps(
            {
                "action": "register",
                "device_id": f"00000000-0000-4000-8000-{i:012d}",
                "key_type": "ed25519",
                "public_key": base64.b64encode(i.to_bytes(32, "big")).decode(),
                "timestamp_ms": base_ms + i,
                "user_id": i % 10007,
                "username": f"user{i % 10007}",
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        leaf_rows.append((i, leaf))
        tree.append(leaf)
    node_rows = [
        (node_key(level, index), value)
        for level, row in enumerate(tree.levels)
        for index, value in enumerate(row)
    ]
    url = settings_env.get("DATABASE_URL")
    previous = None
    sth_rows = []

    async def latest_pg() -> Any:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchrow(LATEST_STH)
        finally:
            await conn.close()

    if url:
        row = asyncio.run(latest_pg())
    else:
        with sqlite3.connect(data_dir / "nexo.db") as conn:
            row = conn.execute(LATEST_STH).fetchone()
    previous = sth_from_row(row)
    origin = previous.origin
    for size in [*range(sth_every, leaves, sth_every), leaves]:
        head = sth_mod.next_head(previous, size, tree.root(size), base_ms + size)
        previous = sth_mod.sign(head, key)
        sth_rows.append(previous)
    print(
        f"  built {leaves} leaves, {len(node_rows)} nodes, {len(sth_rows)} STHs in "
        f"{time.perf_counter() - t0:.1f}s (origin {origin})"
    )
    t0 = time.perf_counter()
    sth_values = [sth_row(s) for s in sth_rows]
    if url:
        import asyncpg

        async def load() -> None:
            conn = await asyncpg.connect(url)
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "log_leaves", records=leaf_rows, columns=["leaf_index", "leaf"]
                    )
                    await conn.copy_records_to_table("log_nodes", records=node_rows, columns=["key", "hash"])
                    await conn.copy_records_to_table(
                        "sths",
                        records=sth_values,
                        columns=list(sth_mod.STH_FIELDS),
                    )
                    await conn.execute(
                        "UPDATE counters SET value = $1 WHERE name = 'sths'", len(sth_rows) + 1
                    )
                await conn.execute("ANALYZE")
            finally:
                await conn.close()

        asyncio.run(load())
    else:
        with sqlite3.connect(data_dir / "nexo.db") as conn:
            conn.executemany("INSERT INTO log_leaves (leaf_index, leaf) VALUES (?, ?)", leaf_rows)
            conn.executemany("INSERT INTO log_nodes (key, hash) VALUES (?, ?)", node_rows)
            conn.executemany(INSERT_STH, sth_values)
            conn.execute("UPDATE counters SET value = ? WHERE name = 'sths'", (len(sth_rows) + 1,))
    print(f"  loaded into {'postgresql' if url else 'sqlite'} in {time.perf_counter() - t0:.1f}s")


def _server_seconds(metrics: str, route: str) -> tuple[float, float]:
    """(sum, count) of nexo_http_request_duration_seconds for GET ``route``."""
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("nexo_http_request_duration_seconds_") and f'route="{route}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("nexo_http_request_duration_seconds_sum"):
                total += value
            elif line.startswith("nexo_http_request_duration_seconds_count"):
                count += value
    return total, count


async def _proof_latencies(port: int, paths: list[str]) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies = []
    try:
        for path in paths:
            started = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{path}: {head.splitlines()[0]!r}")
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
    return latencies


def bench_proofs_and_audit(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexo-bench-1m-")))
    env = {
        **FAST_LIMITS,
        "JWT_SECRET": random_secret(),
        "NEXO_DATA_DIR": str(data_dir),
        "NEXO_SIGNING_KEY_FILE": str(data_dir / "sth_signing.key"),
        "DATABASE_URL": "",
    }
    if args.backend == "postgres":
        env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
    print(f"log of {args.leaves} leaves on {args.backend} ({os.cpu_count()} cores shared with other work)")
    bulk_load(env, data_dir, args.leaves, args.sth_every)
    if args.part in ("all", "large", "proofs"):
        server = stack.enter_context(LocalServer(data_dir, {k: v for k, v in env.items() if v != ""}))
        latest = httpx.get(f"{server.base_url}/api/sth/latest", timeout=10).json()
        size = latest["tree_size"]
        rng = random.Random(1)
        inclusion = [
            f"/api/log/proof/inclusion?leaf_index={rng.randrange(size)}&tree_size={size}"
            for _ in range(args.proofs)
        ]
        consistency = []
        for _ in range(args.proofs):
            first = rng.randrange(1, size)
            consistency.append(
                f"/api/log/proof/consistency?first={first}&second={rng.randrange(first, size + 1)}"
            )
        asyncio.run(_proof_latencies(server.port, inclusion[:50] + consistency[:50]))  # warm-up
        for label, paths, route in (
            ("inclusion", inclusion, "/api/log/proof/inclusion"),
            ("consistency", consistency, "/api/log/proof/consistency"),
        ):
            before = _server_seconds(httpx.get(f"{server.base_url}/metrics", timeout=10).text, route)
            ms = sorted(x * 1000 for x in asyncio.run(_proof_latencies(server.port, paths)))
            after = _server_seconds(httpx.get(f"{server.base_url}/metrics", timeout=10).text, route)
            server_ms = (after[0] - before[0]) / max(after[1] - before[1], 1) * 1000
            print(
                f"  {label:<11} proof at {size} leaves: server mean {server_ms:.2f} ms; round trip "
                f"p50 {statistics.median(ms):.2f} ms, p99 {_percentile(ms, 0.99):.2f} ms ({len(ms)} requests)"
            )
        if args.remote_audit:
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "nexo", "audit", "--quiet", "--url", server.base_url],
                env={**os.environ, "DATABASE_URL": "", "NEXO_DATA_DIR": str(data_dir / "none")},
                cwd=data_dir,
                capture_output=True,
                text=True,
                check=False,
                timeout=3600,
            )
            lines = result.stdout.strip().splitlines()
            print(
                f"  nexo audit --url: exit {result.returncode} in {time.perf_counter() - started:.1f}s wall: "
                f"{lines[-1] if lines else result.stderr[-300:]}"
            )
        server.stop()
    if args.part in ("all", "large", "audit"):
        holder = LocalServer(data_dir, {k: v for k, v in env.items() if v != ""})
        started = time.perf_counter()
        result = _audit(holder)
        lines = result.stdout.strip().splitlines()
        print(
            f"  nexo audit: exit {result.returncode} in {time.perf_counter() - started:.1f}s wall: "
            f"{lines[-1] if lines else result.stderr[-300:]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--part",
        choices=["all", "register", "sequencer", "large", "proofs", "audit"],
        default="all",
        help="large = proofs and audit on one bulk-loaded log",
    )
    parser.add_argument("--clients", type=int, default=50, help="concurrent registering clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="registration run length")
    parser.add_argument("--workers", type=int, default=1, help="server workers (more than 1 needs postgres)")
    parser.add_argument(
        "--sth-interval", type=float, default=None, help="NEXO_STH_INTERVAL (default: the server's default)"
    )
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--sth-every", type=int, default=1000, help="bulk load: leaves per STH")
    parser.add_argument("--proofs", type=int, default=2000, help="proof requests of each kind")
    parser.add_argument(
        "--remote-audit", action="store_true", help="also time nexo audit --url on the 1M log"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.part in ("all", "register"):
            bench_register(args, stack)
        if args.part in ("all", "sequencer"):
            bench_sequencer(args, stack)
        if args.part in ("all", "large", "proofs", "audit"):
            bench_proofs_and_audit(args, stack)


if __name__ == "__main__":
    main()
