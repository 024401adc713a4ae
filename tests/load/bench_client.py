"""Benchmark the client SDK: end-to-end encrypted messages/s between two SDK clients, the
client's CPU per message, and the cost of a fresh, fully verified peer-key lookup in a big log.

Parts (``--part``, default all):

- ``e2e``: a server (SQLite, one worker) and two ``NexoClient``s in this process, alice
  and bob, each with one device. alice sends ``--messages`` messages (each: verified keys
  from the cache, HPKE to bob's device, Ed25519 signature, outbox row, ``send`` frame);
  bob's handler sees each (verify, decrypt, record the seq, ``delivered``). Prints
  messages/s from the first send to the last handled message, this process's CPU per
  message (both clients: encrypt + sign + verify + decrypt + outbox + framing), and the
  crypto alone (seal + open, in a loop).
- ``lookup``: bulk-loads ``--leaves`` genuine leaves (tests/load/bench_transparency.py's
  loader), starts a server on them, registers alice and bob (2 keys each, leaves beyond
  the bulk), then times ``keys_of(bob, fresh=True)``: the device list, the latest STH
  (signature checked), per key its log leaf and an inclusion proof at the new tree size
  (checked); once with the trusted head already current, once with the trusted head reset
  to an older one each time (a consistency proof fetched and checked too).

    python -m tests.load.bench_client                       # everything, 1M leaves
    python -m tests.load.bench_client --part e2e --messages 3000
    python -m tests.load.bench_client --part lookup --leaves 200000

Only 127.0.0.1 is ever targeted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from contracts.server import LocalServer, random_secret
from nexo_client import Message, NexoClient
from nexo_client.envelope import open_envelope, parse, seal
from nexo_client.store import OutboxItem, Store

BENCH_ENV = {
    "NEXO_RATE_LIMIT": "100000000/minute",
    "NEXO_AUTH_RATE_LIMIT": "1000000/minute",
    "NEXO_WS_RATE_LIMIT": "100000000/minute",
    "NEXO_ACCESS_LOG": "0",
}
PASSWORD = "benchmark password"


def _pct(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def bench_outbox(rounds: int) -> float:
    """Median wall time of queueing one message in the outbox (one fsync'd commit), ms."""
    with tempfile.TemporaryDirectory(prefix="nexo-bench-outbox-") as tmp:
        store = Store(tmp)
        times = []
        for i in range(rounds):
            start = time.perf_counter()
            store.queue(OutboxItem(f"id{i}", "bob", "x" * 400))
            times.append((time.perf_counter() - start) * 1000)
        store.close()
    return statistics.median(times)


def bench_crypto(rounds: int) -> tuple[float, float]:
    """Seal (HPKE to one device + Ed25519 sign) and open (verify + HPKE decrypt), µs each."""
    signing, device = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    public = device.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sender_key = signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    text = "a typical short chat message, about sixty bytes of text......"
    start = time.process_time()
    bodies = [seal(text, message_id=f"id{i}", to="bob", sender_user="alice", sender_device="d",
                   signing_key=signing, recipients=[("r", public)]) for i in range(rounds)]
    sealed = time.process_time() - start
    start = time.process_time()
    for body in bodies:
        open_envelope(parse(body), sender_key=sender_key, device="r", private_key=device)
    opened = time.process_time() - start
    return sealed / rounds * 1e6, opened / rounds * 1e6


async def _e2e(base_url: str, state: Path, count: int) -> tuple[float, float]:
    alice_name, bob_name = f"a_{secrets.token_hex(4)}", f"b_{secrets.token_hex(4)}"
    alice = NexoClient(base_url, state / "alice", key_cache_seconds=3600)
    bob = NexoClient(base_url, state / "bob", key_cache_seconds=3600)
    await alice.register(alice_name, PASSWORD)
    await bob.register(bob_name, PASSWORD)
    done = asyncio.Event()
    seen = 0

    async def handler(message: Message) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    bob.on_message(handler)
    bob.start()
    alice.start()
    await alice.keys_of(bob_name)  # warm the verified-key cache (a lookup is measured separately)
    await alice.keys_of(alice_name)
    await asyncio.sleep(0.5)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        await alice.send(bob_name, f"message {i}: a typical short chat message of sixty bytes")
    await asyncio.wait_for(done.wait(), 600)
    await alice.flush(60)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await alice.close()
    await bob.close()
    return wall, cpu


def bench_e2e(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="nexo-bench-client-") as tmp:
        server = LocalServer(Path(tmp) / "server", BENCH_ENV).start()
        try:
            wall, cpu = asyncio.run(_e2e(server.base_url, Path(tmp), args.messages))
        finally:
            server.stop()
    seal_us, open_us = bench_crypto(2000)
    outbox_ms = bench_outbox(200)
    print(f"e2e: {args.messages} messages alice -> bob in {wall:.2f} s = {args.messages / wall:.0f} msgs/s "
          f"(sent, acked, verified, decrypted, handled once)")
    print(f"  client CPU per message (both SDK clients, this process): {cpu / args.messages * 1000:.2f} ms")
    print(f"  crypto alone: seal (HPKE + Ed25519 sign) {seal_us:.0f} us, "
          f"open (verify + HPKE) {open_us:.0f} us")
    print(f"  queueing one message in the outbox (a commit with fsync): p50 {outbox_ms:.2f} ms wall")


async def _lookups(base_url: str, state: Path, rounds: int) -> None:
    alice_name, bob_name = f"a_{secrets.token_hex(4)}", f"b_{secrets.token_hex(4)}"
    bob = NexoClient(base_url, state / "bob")
    await bob.register(bob_name, PASSWORD)
    await bob.close()
    alice = NexoClient(base_url, state / "alice")
    await alice.register(alice_name, PASSWORD)
    async with httpx.AsyncClient(base_url=base_url) as http:
        older = (await http.get("/api/sth/1")).json()  # a head from early in the bulk-loaded log
    keys = await alice.keys_of(bob_name, fresh=True)
    size = alice.verifier.trusted().tree_size  # type: ignore[union-attr]
    for label, reset in (("trusted head current", False), ("consistency from an older head", True)):
        walls, cpus = [], []
        for _ in range(rounds):
            if reset:
                alice.store.put("sth", older)
            cpu, wall = time.process_time(), time.perf_counter()
            await alice.keys_of(bob_name, fresh=True)
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        print(f"  fresh lookup of {len(keys)} keys at {size} leaves ({label}): wall p50 "
              f"{statistics.median(walls):.2f} ms, p99 {_pct(walls, 0.99):.2f} ms; client CPU p50 "
              f"{statistics.median(cpus):.2f} ms ({rounds} lookups)")
    await alice.close()


def bench_lookup(args: argparse.Namespace) -> None:
    from tests.load.bench_transparency import bulk_load

    with tempfile.TemporaryDirectory(prefix="nexo-bench-client-1m-") as tmp:
        data_dir = Path(tmp) / "server"
        data_dir.mkdir()
        env = {**BENCH_ENV, "JWT_SECRET": random_secret(), "NEXO_DATA_DIR": str(data_dir),
               "NEXO_SIGNING_KEY_FILE": str(data_dir / "sth_signing.key")}
        print(f"log of {args.leaves} leaves on sqlite ({os.cpu_count()} cores shared with other work)")
        bulk_load({**env, "DATABASE_URL": ""}, data_dir, args.leaves, 1000)
        server = LocalServer(data_dir, env).start()
        try:
            asyncio.run(_lookups(server.base_url, Path(tmp), args.lookups))
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["all", "e2e", "lookup"], default="all")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.part in ("all", "e2e"):
            bench_e2e(args)
        if args.part in ("all", "lookup"):
            bench_lookup(args)


if __name__ == "__main__":
    main()
