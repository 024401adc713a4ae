"""Grow a server's log behind its back, fast: leaves, every complete-subtree node and one
signed STH per call, written straight into its database (as tests/load/bench_transparency.py
bulk-loads a large log). The hashes are computed here from RFC 9162 §2.1, not by the server's
Merkle code, so tests can compare what the server serves with an independent tree."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from contracts.server import LocalServer
from nexo.platform import db
from nexo.transparency import sth as sth_mod
from nexo.transparency.keys import read_key
from nexo.transparency.models import node_key
from nexo.transparency.repository import INSERT_STH, LATEST_STH, SEQUENCER_LOCK_ID, sth_from_row, sth_row
from nexo.transparency.sth import SignedTreeHead


def leaf_bytes(i: int) -> bytes:
    """A device-registration leaf in the log's format (DESIGN.md)."""
    return json.dumps(
        {
            "action": "register",
            "device_id": f"00000000-0000-4000-8000-{i:012d}",
            "key_type": "ed25519",
            "public_key": base64.b64encode(i.to_bytes(32, "big")).decode(),
            "timestamp_ms": 1_790_000_000_000 + i,
            "user_id": i % 101,
            "username": f"user{i % 101}",
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


@dataclass
class Tree:
    """``levels[l][i]``: the hash of leaves ``i*2**l .. (i+1)*2**l - 1`` (complete subtrees only)."""

    leaves: list[bytes] = field(default_factory=list)
    levels: list[list[bytes]] = field(default_factory=lambda: [[]])

    def append(self, leaf: bytes) -> None:
        self.leaves.append(leaf)
        value = hashlib.sha256(b"\x00" + leaf).digest()
        level, position = 0, len(self.levels[0])
        self.levels[0].append(value)
        while position & 1:
            value = hashlib.sha256(b"\x01" + self.levels[level][position - 1] + value).digest()
            level, position = level + 1, position >> 1
            if len(self.levels) == level:
                self.levels.append([])
            self.levels[level].append(value)

    def root(self, size: int) -> bytes:
        """MTH(D[0:size]) from the complete subtrees (RFC 9162 §2.1.1)."""
        if size == 0:
            return hashlib.sha256(b"").digest()
        parts, start = [], 0
        for level in reversed(range(size.bit_length())):
            if size & (1 << level):
                parts.append(self.levels[level][start >> level])
                start += 1 << level
        value = parts[-1]
        for left in reversed(parts[:-1]):
            value = hashlib.sha256(b"\x01" + left + value).digest()
        return value


def _key_file(server: LocalServer) -> Path:
    configured = server.env.get("NEXO_SIGNING_KEY_FILE")
    return Path(configured) if configured else server.data_dir / "sth_signing.key"


def grow(server: LocalServer, tree: Tree, to_size: int, root: bytes | None = None) -> SignedTreeHead:
    """Append leaves up to ``to_size`` and sign one STH over them (over ``root`` if given: a forgery)."""
    key = read_key(_key_file(server))
    old = len(tree.leaves)
    for i in range(old, to_size):
        tree.append(leaf_bytes(i))
    leaf_rows = [(i, tree.leaves[i]) for i in range(old, to_size)]
    node_rows = [
        (node_key(level, index), tree.levels[level][index])
        for level in range(len(tree.levels))
        for index in range(old >> level, len(tree.levels[level]))
        if (index + 1) << level > old
    ]
    url = server.env.get("DATABASE_URL")

    def sign(latest: SignedTreeHead) -> SignedTreeHead:
        head = sth_mod.next_head(latest, to_size, root or tree.root(to_size), latest.timestamp_ms + 1)
        return sth_mod.sign(head, key)

    if url:

        async def run() -> SignedTreeHead:
            conn = await asyncpg.connect(url)
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", SEQUENCER_LOCK_ID)
                    signed = sign(sth_from_row(tuple(await conn.fetchrow(LATEST_STH))))
                    await conn.copy_records_to_table(
                        "log_leaves", records=leaf_rows, columns=["leaf_index", "leaf"]
                    )
                    await conn.copy_records_to_table("log_nodes", records=node_rows, columns=["key", "hash"])
                    await conn.execute(db.placeholders(INSERT_STH, "postgres"), *sth_row(signed))
                    await conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'sths'")
                return signed
            finally:
                await conn.close()

        return asyncio.run(run())
    with sqlite3.connect(server.data_dir / "nexo.db", timeout=30) as lite:
        lite.execute("BEGIN IMMEDIATE")
        signed = sign(sth_from_row(lite.execute(LATEST_STH).fetchone()))
        lite.executemany("INSERT INTO log_leaves (leaf_index, leaf) VALUES (?, ?)", leaf_rows)
        lite.executemany("INSERT INTO log_nodes (key, hash) VALUES (?, ?)", node_rows)
        lite.execute(INSERT_STH, sth_row(signed))
        lite.execute("UPDATE counters SET value = value + 1 WHERE name = 'sths'")
    return signed


def log_vkey(origin: str, public_key: bytes) -> str:
    """The log's C2SP verifier key: ``origin+hex(key ID)+base64(0x01 || key)``."""
    key_id = sth_mod.key_id(origin, public_key)
    material = base64.b64encode(bytes([1]) + public_key).decode()
    return f"{origin}+{key_id.hex()}+{material}"
