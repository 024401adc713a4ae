"""Idle capacity: authenticated idle WebSocket connections one worker holds, and RSS each (issue 14).

Run (starts its own server on 127.0.0.1, SQLite, one worker, fresh data dir)::

    .venv/bin/python -m tests.load.bench_idle                      # 15,000 connections
    .venv/bin/python -m tests.load.bench_idle --conns 5000 --per-user 5
    .venv/bin/python -m tests.load.bench_idle --postgres           # scratch PostgreSQL DB
    .venv/bin/python -m tests.load.bench_idle --postgres --redis redis://127.0.0.1:6379/0  # + push sweep

It registers ``--conns / --per-user`` users, measures the server worker's RSS,
then a load client in its own process opens ``--conns`` connections
(``Authorization`` header), sends one ``sync`` on each and waits for its ``synced``
(proof that the connection is authenticated and registered for pushes), and
holds them idle for ``--hold`` seconds (answering the server's pings). It prints
how many are held, the worker's RSS before and after (read from ``/proc``; the
largest process of the server's session is the worker), and the RSS per
connection (growth / connections), and the server's CPU while they idle.
Bar: >= 15,000 connections at <= 40 KiB each.
File limits: the soft ``RLIMIT_NOFILE`` is raised to the hard one (20,000 here)
for the server and the client. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contracts.server import LocalServer, scratch_postgres
from tests.load.leanws import LeanClient
from tests.load.procstat import session_cpu_seconds, session_rss_kib
from tests.load.ws_bench import make_accounts

SYNC = '{"type":"sync","since":9007199254740992}'


def raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def worker_rss_kib(session_id: int) -> tuple[int, int]:
    """(pid, RSS KiB) of the largest process of the session: the worker."""
    sizes = session_rss_kib(session_id)
    pid = max(sizes, key=lambda p: sizes[p])
    return pid, sizes[pid]


def sweep_metrics(base_url: str) -> tuple[float, float] | None:
    """(count, total seconds) of the worker's push sweeps, from ``/metrics``; None if none ran."""
    import httpx

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        for name in ("nexo_ws_push_sweep_seconds_count", "nexo_ws_push_sweep_seconds_sum"):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    count = found.get("nexo_ws_push_sweep_seconds_count", 0.0)
    return (count, found.get("nexo_ws_push_sweep_seconds_sum", 0.0)) if count else None


# -- the load client process -------------------------------------------------------------------


async def _hold(ws_url: str, tokens: list[str], parallel: int, hold: float, report: Any) -> None:
    clients: list[LeanClient] = []
    synced = 0
    failed: list[str] = []
    closed_early = 0
    sem = asyncio.Semaphore(parallel)

    async def one(token: str) -> None:
        nonlocal synced
        got = asyncio.get_running_loop().create_future()

        def on_text(text: str) -> None:
            if '"synced"' in text and not got.done():
                got.set_result(None)

        async with sem:
            try:
                client = await LeanClient.open(ws_url, {"Authorization": f"Bearer {token}"}, on_text)
                client.send([SYNC])
                await asyncio.wait_for(got, 30)
            except Exception as exc:
                failed.append(repr(exc)[:200])
                return
        clients.append(client)
        synced += 1

    started = time.monotonic()
    await asyncio.gather(*(one(t) for t in tokens))
    report.send(("held", synced, time.monotonic() - started, failed[:5], len(failed)))
    await asyncio.sleep(hold)
    for client in clients:
        if client.closed is not None and client.closed.done():
            closed_early += 1
    report.send(("after_hold", len(clients) - closed_early, closed_early))
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


def _client_proc(ws_url: str, tokens: list[str], parallel: int, hold: float, report: Any) -> None:
    raise_file_limit()
    asyncio.run(_hold(ws_url, tokens, parallel, hold, report))
    report.close()


# -- server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_server(
    *, postgres: bool = False, redis: str | None = None, workers: int = 1, extra: dict[str, str] | None = None
) -> Iterator[tuple[LocalServer, str]]:
    """A fresh server on 127.0.0.1 with budgets out of the way; (server, DATABASE_URL or "")."""
    env = {
        "NEXO_AUTH_RATE_LIMIT": "1000000/minute",
        "NEXO_RATE_LIMIT": "1000000/minute",
        "NEXO_ARGON2_MEMORY_KIB": "8192",
        "NEXO_ARGON2_TIME_COST": "1",
        "NEXO_ACCESS_LOG": "0",
        **(extra or {}),
    }
    with tempfile.TemporaryDirectory(prefix="nexo-bench-") as tmp, contextlib.ExitStack() as stack:
        if postgres:
            env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
        if redis:
            env["REDIS_URL"] = redis
            env["NEXO_REDIS_PREFIX"] = f"bench{os.getpid()}"
        server = LocalServer(Path(tmp), env, workers=workers)
        server.start()
        try:
            yield server, env.get("DATABASE_URL", "")
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=15000, help="connections to hold (default 15000)")
    parser.add_argument("--per-user", type=int, default=10, help="connections per user (default 10)")
    parser.add_argument("--hold", type=float, default=25.0, help="seconds to hold them idle (one ping round)")
    parser.add_argument("--parallel", type=int, default=200, help="handshakes in flight (default 200)")
    parser.add_argument("--postgres", action="store_true", help="run the server on a scratch PostgreSQL DB")
    parser.add_argument(
        "--redis", help="REDIS_URL for the server (a broker: the push sweep runs over the idle users)"
    )
    args = parser.parse_args(argv)
    hard = raise_file_limit()
    if args.conns + 100 > hard:
        print(f"note: {args.conns} connections near the hard file limit {hard}", flush=True)
    users = -(-args.conns // args.per_user)
    with bench_server(postgres=args.postgres, redis=args.redis) as (server, _):
        assert server.process is not None
        base_url, session = server.base_url, server.process.pid
        ws_url = base_url.replace("http", "ws", 1) + "/ws"
        t0 = time.monotonic()
        accounts = make_accounts(base_url, users)
        print(f"server {base_url}: {users} users in {time.monotonic() - t0:.0f} s", flush=True)
        tokens = [accounts[i % users].access_token for i in range(args.conns)]
        time.sleep(1.0)
        pid, before = worker_rss_kib(session)
        parent, child = mp.Pipe(duplex=False)
        proc = mp.Process(target=_client_proc, args=(ws_url, tokens, args.parallel, args.hold, child))
        proc.start()
        child.close()
        _, held, took, errors, n_failed = parent.recv()
        _, after = worker_rss_kib(session)
        cpu_before = sum(session_cpu_seconds(session))
        sweeps_before = sweep_metrics(base_url) or (0.0, 0.0)
        print(
            f"held {held} of {args.conns} authenticated connections ({users} users) in {took:.1f} s; "
            f"{n_failed} failed {errors}",
            flush=True,
        )
        _, still, dropped = parent.recv()
        _, after_hold = worker_rss_kib(session)
        idle_cpu = (sum(session_cpu_seconds(session)) - cpu_before) / args.hold
        proc.join(30)
        grown = max(after, after_hold) - before
        per_conn = grown / max(1, held)
        print(
            f"worker pid {pid}: RSS {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB with them, "
            f"{after_hold / 1024:.0f} MiB after {args.hold:g} s idle ({still} still open, {dropped} dropped)",
            flush=True,
        )
        print(f"RSS per connection: {per_conn:.1f} KiB  (bar: >= 15000 held at <= 40 KiB)", flush=True)
        print(f"server CPU while they idle: {idle_cpu * 100:.1f} % of a core (pings, session checks, sweeps)")
        sweeps = sweep_metrics(base_url)
        if sweeps:
            count, total = sweeps[0] - sweeps_before[0], sweeps[1] - sweeps_before[1]
            print(
                f"push sweeps while they idle: {count:.0f}, {total / max(count, 1) * 1000:.1f} ms each over "
                f"{users} connected users (wall time, the database's work included)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
