"""WebSocket messaging benchmark: acked msg/s, ack latency, end-to-end latency (issue 4).

Run (starts its own server on 127.0.0.1 with a fresh data dir)::

    .venv/bin/python -m tests.load.ws_bench                       # SQLite, 1 worker
    .venv/bin/python -m tests.load.ws_bench --postgres --workers 2 # scratch PostgreSQL DB
    .venv/bin/python -m tests.load.ws_bench --url http://127.0.0.1:5000  # an already running server

For each N in ``--conns`` (default 1,10,100) and each in-flight depth in
``--inflight`` (default 1,32) it opens N connections (N users), each sending
``--per-conn`` messages to an offline recipient while keeping up to the depth
unacked, and prints acked msg/s (first send to last ack) and p50/p99 ack
latency. Then it measures end-to-end latency: ``--e2e-conns`` sender/recipient
pairs, recipients online, one send in flight each; the time from send to the
recipient's ``message`` frame. The load clients run in ``--procs`` separate
processes (the Python client costs about as much CPU as the server; ``--client native``
uses ``wsload.c`` instead). Bounded: every phase sends a fixed count and has a timeout
(``WS_BENCH_TIMEOUT`` seconds, default 300). Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from websockets.asyncio.client import connect

from contracts.client import Account, new_password, new_username
from tests.load.leanws import LeanClient
from tests.load.procstat import session_cpu_seconds

PHASE_TIMEOUT = float(os.environ.get("WS_BENCH_TIMEOUT", "300"))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- load client processes ------------------------------------------------------------------


async def _sender(
    ws_url: str,
    token: str,
    to: str,
    count: int,
    depth: int,
    body: str,
    start_at: float,
    lat: list[float],
    marks: list[float],
) -> None:
    """One connection: keep up to ``depth`` sends unacked until ``count`` are acked."""
    clock = time.perf_counter
    sent_at: dict[str, float] = {}
    done = asyncio.get_running_loop().create_future()
    state = {"sent": 0, "acked": 0}
    template = '{"type":"send","message_id":"%s","to":"' + to + '","body":"' + body + '"}'

    def frames(k: int) -> list[str]:
        out = []
        now = clock()
        for _ in range(k):
            mid = str(uuid.uuid4())
            sent_at[mid] = now
            out.append(template % mid)
        state["sent"] += k
        return out

    pending_acks = 0

    def on_text(text: str) -> None:
        nonlocal pending_acks
        now = clock()
        # {"type":"ack","message_id":"<36>",...}: slice instead of a JSON parse
        if not text.startswith('{"type":"ack"'):
            raise RuntimeError(f"unexpected frame {text[:200]}")
        mid = text[28:64]
        lat.append(now - sent_at.pop(mid))
        state["acked"] += 1
        pending_acks += 1
        if state["acked"] >= count and not done.done():
            done.set_result(None)
        elif pending_acks == 1:
            asyncio.get_running_loop().call_soon(refill)

    def refill() -> None:
        nonlocal pending_acks
        k = min(pending_acks, count - state["sent"])
        pending_acks = 0
        if k > 0:
            client.send(frames(k))

    client = await LeanClient.open(ws_url, {"Authorization": f"Bearer {token}"}, on_text)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    first = clock()
    client.send(frames(min(depth, count)))
    await asyncio.wait_for(done, PHASE_TIMEOUT)
    marks.append(first)
    marks.append(clock())
    client.close()


def _sender_proc(args: tuple[str, list[str], str, int, int, str, float], out: Any) -> None:
    ws_url, tokens, to, count, depth, body, start_at = args
    lat: list[float] = []
    marks: list[float] = []

    async def main() -> None:
        await asyncio.gather(
            *(_sender(ws_url, t, to, count, depth, body, start_at, lat, marks) for t in tokens)
        )

    asyncio.run(main())
    # perf_counter is per process: report wall-clock offsets via time.time() deltas.
    offset = time.time() - time.perf_counter()
    out.send((lat, min(marks[0::2]) + offset, max(marks[1::2]) + offset))
    out.close()


async def _pair(ws_url: str, s_token: str, r_token: str, r_name: str, count: int, lat: list[float]) -> None:
    headers = {"Authorization": f"Bearer {r_token}"}
    async with (
        connect(ws_url, additional_headers=headers, ping_interval=None, compression=None) as rws,
        connect(
            ws_url,
            additional_headers={"Authorization": f"Bearer {s_token}"},
            ping_interval=None,
            compression=None,
        ) as sws,
    ):
        for _ in range(count):
            mid = str(uuid.uuid4())
            t0 = time.perf_counter()
            await sws.send(json.dumps({"type": "send", "message_id": mid, "to": r_name, "body": "e2e"}))
            while True:
                frame = json.loads(await rws.recv())
                if frame.get("type") == "message" and frame["message_id"] == mid:
                    lat.append(time.perf_counter() - t0)
                    break
            # drain the sender's ack so it does not pile up
            while json.loads(await sws.recv()).get("type") != "ack":
                pass


def _pair_proc(args: tuple[str, list[tuple[str, str, str]], int], out: Any) -> None:
    ws_url, pairs, count = args
    lat: list[float] = []

    async def main() -> None:
        await asyncio.gather(*(_pair(ws_url, s, r, name, count, lat) for s, r, name in pairs))

    asyncio.run(main())
    out.send(lat)
    out.close()


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


SERVER_SESSION: int | None = None


def run_throughput(
    ws_url: str, tokens: list[str], to: str, per_conn: int, depth: int, procs: int, body: str
) -> dict[str, float]:
    start_at = time.time() + 1.5
    cpu_before = session_cpu_seconds(SERVER_SESSION)
    pipes, workers = [], []
    for chunk in _split(tokens, procs):
        parent, child = mp.Pipe(duplex=False)
        p = mp.Process(
            target=_sender_proc, args=((ws_url, chunk, to, per_conn, depth, body, start_at), child)
        )
        p.start()
        pipes.append(parent)
        workers.append(p)
    lat: list[float] = []
    first, last = float("inf"), 0.0
    for parent in pipes:
        if not parent.poll(PHASE_TIMEOUT):
            raise RuntimeError("a load process did not finish in time")
        part, begin, end = parent.recv()
        lat += part
        first, last = min(first, begin), max(last, end)
    for p in workers:
        p.join(10)
    return _throughput_result(lat, first, last, cpu_before)


def _throughput_result(
    lat: list[float], first: float, last: float, cpu_before: tuple[float, float]
) -> dict[str, float]:
    total = len(lat)
    user_after, system_after = session_cpu_seconds(SERVER_SESSION)
    user, system = user_after - cpu_before[0], system_after - cpu_before[1]
    return {
        "server_cpu_us": (user + system) / total * 1e6,
        "server_sys_us": system / total * 1e6,
        "acked": total,
        "seconds": last - first,
        "rate": total / (last - first),
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": max(lat) * 1000,
    }


NATIVE_SOURCE = Path(__file__).with_name("wsload.c")


def build_native() -> Path:
    """Compile ``wsload.c`` (once per source version) with the system C compiler."""
    source = NATIVE_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    binary = Path(tempfile.gettempdir()) / f"nexo-wsload-{digest}"
    if not binary.exists():
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit("--client native needs a C compiler (cc or gcc)")
        partial = binary.with_suffix(f".{os.getpid()}")
        subprocess.run([compiler, "-O2", "-o", str(partial), str(NATIVE_SOURCE)], check=True)
        partial.replace(binary)
    return binary


def run_throughput_native(
    ws_url: str, tokens: list[str], to: str, per_conn: int, depth: int, procs: int, body: str
) -> dict[str, float]:
    """``run_throughput`` with the native client (``wsload.c``) in ``procs`` processes."""
    binary = build_native()
    url = urlparse(ws_url)
    start_at = time.time() + 1.5
    cpu_before = session_cpu_seconds(SERVER_SESSION)
    children = []
    for chunk in _split(tokens, procs):
        argv = [str(binary), url.hostname or "127.0.0.1", str(url.port), to, str(len(body))]
        argv += [str(per_conn), str(depth), f"{start_at:.6f}"]
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None
        child.stdin.write("\n".join(chunk) + "\n")
        child.stdin.close()
        children.append(child)
    lat: list[float] = []
    first, last = float("inf"), 0.0
    for child in children:
        assert child.stdout is not None
        out = child.stdout.read()
        if child.wait(PHASE_TIMEOUT) != 0:
            raise RuntimeError("the native load client failed (its message is above)")
        lines = out.split("\n")
        begin, end = (float(x) for x in lines[0].split())
        first, last = min(first, begin), max(last, end)
        lat += [float(x) / 1e6 for x in lines[1:] if x]
    return _throughput_result(lat, first, last, cpu_before)


def run_e2e(ws_url: str, pairs: list[tuple[str, str, str]], count: int, procs: int) -> dict[str, float]:
    pipes, workers = [], []
    for chunk in _split(pairs, procs):
        parent, child = mp.Pipe(duplex=False)
        p = mp.Process(target=_pair_proc, args=((ws_url, chunk, count), child))
        p.start()
        pipes.append(parent)
        workers.append(p)
    lat: list[float] = []
    for parent in pipes:
        if not parent.poll(PHASE_TIMEOUT):
            raise RuntimeError("an e2e process did not finish in time")
        lat += parent.recv()
    for p in workers:
        p.join(10)
    return {
        "count": len(lat),
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "mean_ms": statistics.fmean(lat) * 1000,
    }


# -- accounts and server ----------------------------------------------------------------------


def make_accounts(base_url: str, count: int) -> list[Account]:
    async def one(client: httpx.AsyncClient) -> Account:
        name, password = new_username("bench"), new_password()
        r = await client.post("/api/auth/register", json={"username": name, "password": password})
        r.raise_for_status()
        user = r.json()["user"]
        r = await client.post("/api/auth/login", json={"username": name, "password": password})
        r.raise_for_status()
        t = r.json()
        return Account(base_url, name, password, int(user["id"]), t["access_token"], t["refresh_token"])

    async def main() -> list[Account]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            sem = asyncio.Semaphore(8)

            async def guarded() -> Account:
                async with sem:
                    return await one(client)

            return list(await asyncio.gather(*(guarded() for _ in range(count))))

    return asyncio.run(main())


@contextlib.contextmanager
def local_server(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url.rstrip("/")
        return
    from contracts.server import LocalServer, scratch_postgres

    env = {
        "NEXO_WS_RATE_LIMIT": "100000000/minute",
        "NEXO_WS_FRAME_RATE": "100000000/minute",
        "NEXO_AUTH_RATE_LIMIT": "100000/minute",
        "NEXO_RATE_LIMIT": "100000/minute",
        "NEXO_ARGON2_MEMORY_KIB": os.environ.get("NEXO_ARGON2_MEMORY_KIB", "8192"),
    }
    with tempfile.TemporaryDirectory(prefix="nexo-bench-") as tmp, contextlib.ExitStack() as stack:
        if args.postgres:
            env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
        if args.redis:
            env["REDIS_URL"] = args.redis
            env["NEXO_REDIS_PREFIX"] = f"bench{uuid.uuid4().hex[:8]}"
        server = LocalServer(Path(tmp), env, workers=args.workers)
        server.start()
        global SERVER_SESSION
        SERVER_SESSION = server.process.pid if server.process else None
        try:
            yield server.base_url
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", help="benchmark this running server (127.0.0.1 only) instead of starting one"
    )
    parser.add_argument("--postgres", action="store_true", help="start the server on a scratch PostgreSQL DB")
    parser.add_argument("--redis", help="REDIS_URL for the started server (default: none)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--conns", default="1,10,100", help="connection counts (comma list)")
    parser.add_argument("--inflight", default="1,32", help="sends in flight per connection (comma list)")
    parser.add_argument(
        "--per-conn",
        type=int,
        default=0,
        help="messages per connection (default: about 60000 total, at least 200 each)",
    )
    parser.add_argument("--procs", type=int, default=2, help="load client processes")
    parser.add_argument(
        "--client",
        choices=("python", "native"),
        default="python",
        help="load client for the throughput rows: python (tests/load/leanws.py) or native "
        "(tests/load/wsload.c, compiled with cc on first use; far less CPU per message)",
    )
    parser.add_argument("--e2e-conns", type=int, default=10, help="sender/recipient pairs for e2e latency")
    parser.add_argument("--e2e-count", type=int, default=200, help="messages per e2e pair")
    parser.add_argument("--body-bytes", type=int, default=64)
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("--url must be on 127.0.0.1")
    conns = [int(x) for x in args.conns.split(",") if x]
    depths = [int(x) for x in args.inflight.split(",") if x]
    body = "x" * args.body_bytes
    with local_server(args) as base_url:
        ws_url = base_url.replace("http", "ws", 1) + "/ws"
        need = max([*conns, 0])
        accounts = make_accounts(base_url, need + 1 + 2 * args.e2e_conns)
        sink = accounts[0]
        senders = accounts[1 : need + 1]
        pairs_src = accounts[need + 1 :]
        print(
            f"server {base_url}, {args.procs} {args.client} load processes, body {args.body_bytes} B",
            flush=True,
        )
        for n in conns:
            for depth in depths:
                per_conn = args.per_conn or max(200, 60000 // n if depth > 1 else 6000 // n)
                runner = run_throughput_native if args.client == "native" else run_throughput
                result = runner(
                    ws_url,
                    [a.access_token for a in senders[:n]],
                    sink.username,
                    per_conn,
                    depth,
                    args.procs,
                    body,
                )
                print(
                    f"conns={n:<4} inflight={depth:<3} acked={result['acked']:<7} "
                    f"rate={result['rate']:>9.0f} msg/s  ack p50={result['p50_ms']:.2f} ms "
                    f"p99={result['p99_ms']:.2f} ms max={result['max_ms']:.1f} ms  "
                    f"server CPU {result['server_cpu_us']:.0f} us/msg ({result['server_sys_us']:.0f} system)",
                    flush=True,
                )
        if args.e2e_conns:
            pairs = [
                (
                    pairs_src[2 * i].access_token,
                    pairs_src[2 * i + 1].access_token,
                    pairs_src[2 * i + 1].username,
                )
                for i in range(args.e2e_conns)
            ]
            e2e = run_e2e(ws_url, pairs, args.e2e_count, args.procs)
            print(
                f"e2e pairs={args.e2e_conns} messages={e2e['count']} send->push p50={e2e['p50_ms']:.2f} ms "
                f"p99={e2e['p99_ms']:.2f} ms mean={e2e['mean_ms']:.2f} ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
