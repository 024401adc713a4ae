"""Hostile mix: honest senders' ack latency while hostile connections misbehave (issue 14).

Run (starts its own server on 127.0.0.1, fresh data dir)::

    .venv/bin/python -m tests.load.bench_hostile                          # SQLite, 1 worker
    .venv/bin/python -m tests.load.bench_hostile --postgres --workers 2    # scratch PostgreSQL DB

Two phases on one server, the same honest load in each: 100 honest connections
(100 users) each keep one ``send`` in flight (``--per-conn`` messages each, to an
offline user) with the native load client (``wsload.c``, as ``ws_bench --client
native``). Phase 1 alone (baseline); phase 2 while ``--hostile`` (20) connections
of 5 hostile users, in their own process, attack:

* non-readers: a small receive buffer, never read; send ``sync`` from 0 every
  50 ms (at most ``--max-syncs`` each), so the server has history to write;
* sync storms: read everything, and send the next ``sync`` from 0 at once;
* invalid-frame floods: batches of malformed JSON and binary frames, as fast
  as the socket takes them, reading the error replies.

Every hostile user first gets a history (``--history`` messages of ``--history-bytes``).
A hostile connection the server closes is reopened after 100 ms (counted).
Printed: honest acked msg/s and p50/p99 ack per phase and their ratio (bar:
phase 2 p99 <= 2x phase 1), the server worker's RSS before phase 2 and its
peak during it (sampled every 100 ms), the hostile connections' closes, and
the honest messages stored (from the database; bar: every acked one).
Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from contracts.client import Account
from tests.load import ws_bench
from tests.load.bench_idle import bench_server, raise_file_limit
from tests.load.leanws import LeanClient, encode_text
from tests.load.procstat import session_rss_kib
from tests.load.ws_bench import make_accounts, run_throughput_native

SYNC_ALL = '{"type":"sync","since":0}'
HOSTILE_USERS = 5


# -- hostile clients (their own process) -----------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


async def _non_reader(host: str, port: int, token: str, stop: float, max_syncs: int, tally: Tally) -> None:
    """Authenticate, then ask for the whole history again and again without reading."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < stop:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            head = await asyncio.wait_for(loop.sock_recv(sock, 1024), 10)
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                tally.add("non_reader_refused")
                await asyncio.sleep(0.1)
                continue
            tally.add("non_reader_opened")
            sent = 0
            while time.monotonic() < stop and sent < max_syncs:
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, encode_text(SYNC_ALL)), 1.0)
                except TimeoutError:
                    tally.add("non_reader_send_blocked")
                    continue
                sent += 1
                tally.add("non_reader_syncs")
                await asyncio.sleep(0.05)
            # then sit there, unread, until the end (or until the server drops us)
            while time.monotonic() < stop:
                await asyncio.sleep(0.2)
                try:
                    alive = sock.send(b"") == 0  # raises once the server reset the connection
                except OSError:
                    alive = False
                if not alive:
                    break
            tally.add("non_reader_closed_by_server" if time.monotonic() < stop else "non_reader_held")
        except (OSError, TimeoutError):
            tally.add("non_reader_errors")
            await asyncio.sleep(0.1)
        finally:
            sock.close()


async def _lean(ws_url: str, token: str, stop: float, tally: Tally, kind: str, flood: bool) -> None:
    """A sync storm (``flood`` False) or an invalid-frame flood (True) on one connection at a time."""
    synced = asyncio.Event()

    def on_text(text: str) -> None:
        tally.add(f"{kind}_bytes_read", len(text))
        if text.startswith('{"type":"synced"'):
            synced.set()

    while time.monotonic() < stop:
        try:
            client = await LeanClient.open(ws_url, {"Authorization": f"Bearer {token}"}, on_text)
        except Exception:
            tally.add(f"{kind}_refused")
            await asyncio.sleep(0.1)
            continue
        tally.add(f"{kind}_opened")
        assert client.closed is not None
        try:
            while time.monotonic() < stop and not client.closed.done():
                if flood:
                    assert client.transport is not None
                    client.send(["{not json"] * 50 + ['{"type":"nope"}'] * 50)
                    client.transport.write(b"\x82\x84\x00\x00\x00\x00abcd" * 50)  # binary frames
                    tally.add("flood_frames", 150)
                    await asyncio.sleep(0.001)
                    # the socket's own backpressure: wait while a MiB is unsent
                    while client.transport.get_write_buffer_size() > 1 << 20 and not client.closed.done():  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                else:
                    synced.clear()
                    client.send([SYNC_ALL])
                    tally.add("storm_syncs")
                    try:
                        await asyncio.wait_for(synced.wait(), 10)
                        tally.add("storm_synced")
                    except TimeoutError:
                        tally.add("storm_sync_timeouts")
        finally:
            if client.closed.done():
                tally.add(f"{kind}_closed_by_server")
                code, _ = client.closed.result()
                tally.add(f"{kind}_close_{code}")
            elif client.transport is not None:
                client.transport.abort()
        await asyncio.sleep(0.1)


def _hostile_proc(
    ws_url: str, tokens: list[str], count: int, duration: float, max_syncs: int, ready: Any, report: Any
) -> None:
    raise_file_limit()
    host_port = ws_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)

    async def main() -> dict[str, int]:
        tally = Tally()
        ready.wait()
        stop = time.monotonic() + duration
        jobs = []
        for i in range(count):
            token = tokens[i % len(tokens)]
            kind = ("non_reader", "storm", "flood")[i % 3]
            if kind == "non_reader":
                jobs.append(_non_reader(host, int(port), token, stop, max_syncs, tally))
            else:
                jobs.append(_lean(ws_url, token, stop, tally, kind, flood=kind == "flood"))
        await asyncio.gather(*jobs)
        return tally.counts

    report.send(asyncio.run(main()))
    report.close()


# -- setup --------------------------------------------------------------------------------------


async def _seed_history(ws_url: str, accounts: list[Account], count: int, size: int) -> None:
    """Each hostile user sends ``count`` messages of ``size`` bytes to the next one."""
    body = "h" * size

    async def one(sender: Account, to: str) -> None:
        done = asyncio.get_running_loop().create_future()
        acked = 0

        def on_text(text: str) -> None:
            nonlocal acked
            if text.startswith('{"type":"ack"'):
                acked += 1
                if acked >= count and not done.done():
                    done.set_result(None)
            elif text.startswith('{"type":"error"'):
                if not done.done():
                    done.set_exception(RuntimeError(text[:200]))

        client = await LeanClient.open(ws_url, {"Authorization": f"Bearer {sender.access_token}"}, on_text)
        for start in range(0, count, 20):
            frames = [
                json.dumps({"type": "send", "message_id": str(uuid.uuid4()), "to": to, "body": body})
                for _ in range(min(20, count - start))
            ]
            client.send(frames)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(done, 120)
        client.close()

    await asyncio.gather(
        *(one(a, accounts[(i + 1) % len(accounts)].username) for i, a in enumerate(accounts))
    )


def count_received(database: str, data_dir: Path, user_id: int) -> int:
    if database.startswith("postgres"):
        import asyncpg

        async def query() -> int:
            conn = await asyncpg.connect(database)
            try:
                sql = "SELECT COUNT(*) FROM messages WHERE recipient_id = $1"
                return int(await conn.fetchval(sql, user_id))
            finally:
                await conn.close()

        return asyncio.run(query())
    with sqlite3.connect(data_dir / "nexo.db") as db:
        sql = "SELECT COUNT(*) FROM messages WHERE recipient_id = ?"
        return int(db.execute(sql, (user_id,)).fetchone()[0])


class RssSampler(threading.Thread):
    """Peak RSS (KiB) of the server's largest process, sampled every 100 ms."""

    def __init__(self, session: int) -> None:
        super().__init__(daemon=True)
        self.session = session
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            sizes = session_rss_kib(self.session)
            if sizes:
                self.peak = max(self.peak, max(sizes.values()))
            time.sleep(0.1)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(5)
        return self.peak


def _phase(label: str, ws_url: str, tokens: list[str], sink: str, per_conn: int) -> dict[str, float]:
    result = run_throughput_native(ws_url, tokens, sink, per_conn, 1, 2, "x" * 64)
    print(
        f"{label}: acked={result['acked']} rate={result['rate']:.0f} msg/s "
        f"ack p50={result['p50_ms']:.2f} ms p99={result['p99_ms']:.2f} ms max={result['max_ms']:.1f} ms",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", action="store_true", help="run the server on a scratch PostgreSQL DB")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--honest", type=int, default=100, help="honest connections, 1 in flight each")
    parser.add_argument("--per-conn", type=int, default=150, help="messages per honest connection per phase")
    parser.add_argument("--hostile", type=int, default=20, help="hostile connections")
    parser.add_argument("--history", type=int, default=200, help="messages in each hostile user's history")
    parser.add_argument("--history-bytes", type=int, default=8192, help="body size of those messages")
    parser.add_argument("--max-syncs", type=int, default=10, help="syncs each non-reader asks for")
    args = parser.parse_args(argv)
    raise_file_limit()
    extra = {"NEXO_WS_RATE_LIMIT": "100000000/minute"}
    with bench_server(postgres=args.postgres, workers=args.workers, extra=extra) as (server, database):
        assert server.process is not None
        base_url, session, data_dir = server.base_url, server.process.pid, server.data_dir
        ws_bench.SERVER_SESSION = session
        ws_url = base_url.replace("http", "ws", 1) + "/ws"
        accounts = make_accounts(base_url, 1 + args.honest + HOSTILE_USERS)
        sink, honest, hostile = accounts[0], accounts[1 : 1 + args.honest], accounts[1 + args.honest :]
        asyncio.run(_seed_history(ws_url, hostile, args.history, args.history_bytes))
        tokens = [a.access_token for a in honest]
        print(
            f"server {base_url} ({args.workers} worker(s), {'PostgreSQL' if database else 'SQLite'}); "
            f"{args.honest} honest x 1 in flight x {args.per_conn}; {args.hostile} hostile connections "
            f"of {HOSTILE_USERS} users, each with {args.history} x {args.history_bytes} B of history",
            flush=True,
        )
        base = _phase("phase 1, honest only      ", ws_url, tokens, sink.username, args.per_conn)
        rss_before = max(session_rss_kib(session).values())
        ready = mp.Event()
        parent, child = mp.Pipe(duplex=False)
        duration = max(10.0, base["acked"] / max(base["rate"], 1.0) * 3 + 8.0)
        hostile_tokens = [a.access_token for a in hostile]
        proc = mp.Process(
            target=_hostile_proc,
            args=(ws_url, hostile_tokens, args.hostile, duration, args.max_syncs, ready, child),
        )
        proc.start()
        child.close()
        sampler = RssSampler(session)
        sampler.start()
        ready.set()
        time.sleep(3.0)  # let the attack reach its stride
        attacked = _phase("phase 2, with the hostile", ws_url, tokens, sink.username, args.per_conn)
        tally = parent.recv()
        proc.join(30)
        peak = sampler.stop()
        rss_after = max(session_rss_kib(session).values())
        stored = count_received(database, data_dir, sink.user_id)
        expected = 2 * args.honest * args.per_conn
        ratio = attacked["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
        print(f"honest p99 ratio (attacked / alone): {ratio:.2f}  (bar: <= 2)", flush=True)
        print(
            f"server RSS (largest process): {rss_before / 1024:.0f} MiB before the attack, peak "
            f"{peak / 1024:.0f} MiB during it (+{(peak - rss_before) / 1024:.0f} MiB), "
            f"{rss_after / 1024:.0f} MiB after",
            flush=True,
        )
        print(f"honest messages stored: {stored} of {expected} acked", flush=True)
        print("hostile: " + ", ".join(f"{k}={v}" for k, v in sorted(tally.items())), flush=True)
    return 0 if stored == expected else 1


if __name__ == "__main__":
    sys.exit(main())
