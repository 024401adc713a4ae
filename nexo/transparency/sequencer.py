"""The sequencer: queued leaves become one new signed tree head per batch.

There is no timer. Entries wait in a queue while a commit runs; as soon as it
ends, everything that queued meanwhile goes into the next transaction:

1. take the sequencer lock (PostgreSQL advisory lock, SQLite write lock) and
   read the latest STH *inside* it, so two STHs never share an index;
2. let each entry's writer *claim* it (e.g. a revocation of a device that is
   already revoked is refused and takes no index);
3. append the leaves and the complete-subtree hashes they create
   (O(batch + log n)), write the domain rows, sign and store STH ``i + 1``,
   bump the ``sths`` counters;
4. commit, then answer every caller with its leaf index, the STH and an
   inclusion proof against it.

A transaction the database refuses (a row only it objects to) is retried in
halves, recursively, so one bad entry fails alone and the others of its batch
are still sequenced (issue 14); at most :data:`MAX_ISOLATION_COMMITS` extra
transactions per batch, and none when the database is unreachable. Only the
transaction is retried: once it has committed, its leaves are never appended
again.

Each worker process runs one sequencer; the lock makes them take turns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import Counter, Histogram
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from nexo import db
from nexo.errors import ServiceUnavailable
from nexo.transparency import merkle, repository
from nexo.transparency import sth as sth_mod
from nexo.transparency.sth import SignedTreeHead

log = logging.getLogger("nexo.transparency")

LEAVES_APPENDED = Counter("nexo_log_leaves_appended_total", "Leaves appended to the transparency log")
STHS_SIGNED = Counter("nexo_log_sths_signed_total", "Signed tree heads made by this server")
BATCH_SIZE = Histogram(
    "nexo_log_batch_size",
    "Leaves per signed tree head",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
SEQUENCE_LATENCY = Histogram(
    "nexo_log_sequence_latency_seconds",
    "Time from queuing a leaf to its signed tree head being committed",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

MAX_BATCH = 1000
#: Extra transactions one refused batch may spend isolating its bad entries.
MAX_ISOLATION_COMMITS = 64


class SequencingFailed(ServiceUnavailable):
    """The entry's transaction failed (503); the client may retry. The cause is logged."""

    def __init__(self) -> None:
        super().__init__("the log entry could not be sequenced; retry")


class Rejected(Exception):
    """The entry's writer refused it (for example, the device is already revoked)."""


class EntryWriter(Protocol):
    """Domain rows written in the same transaction as the leaves."""

    async def claim(self, conn: BaseDBAsyncClient, payloads: list[Any]) -> list[bool]:
        """Which entries may go in (a refused one takes no index). Runs under the lock."""
        ...

    async def write(self, conn: BaseDBAsyncClient, items: list[tuple[Any, int]]) -> None:
        """Write the rows of the claimed entries, each with its leaf index."""
        ...


@dataclass(frozen=True, slots=True)
class Sequenced:
    """Where an entry landed: its leaf, the first STH that holds it and the proof."""

    leaf_index: int
    leaf: bytes
    leaf_hash: bytes
    sth: SignedTreeHead
    inclusion_proof: list[bytes]
    #: ``sth.to_json()``, made once per batch and shared by its entries: do not modify.
    sth_json: dict[str, Any]


@dataclass(slots=True)
class _Pending:
    kind: str
    payload: Any
    leaf: bytes
    future: asyncio.Future[Sequenced]
    queued: float = field(default_factory=time.perf_counter)


class Sequencer:
    def __init__(self, key: Ed25519PrivateKey, *, max_batch: int = MAX_BATCH) -> None:
        self.key = key
        self.max_batch = max_batch
        self.writers: dict[str, EntryWriter] = {}
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: ((tree size, root hash), root nodes) of the last STH this sequencer committed.
        self._frontier: tuple[tuple[int, bytes], dict[merkle.NodeId, bytes]] | None = None

    def register_writer(self, kind: str, writer: EntryWriter) -> None:
        self.writers[kind] = writer

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nexo-sequencer")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None

    async def submit(self, kind: str, payload: Any, leaf: bytes) -> Sequenced:
        """Queue one leaf; return once it is in a committed, signed tree head."""
        if kind not in self.writers:
            raise KeyError(f"no writer for entry kind {kind!r}")
        if self._task is None or self._stopping:
            raise RuntimeError("the sequencer is not running")
        future: asyncio.Future[Sequenced] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(kind, payload, leaf, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                try:
                    await self._commit_isolating(batch)
                except asyncio.CancelledError:
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.cancel()
                    raise
                except Exception:
                    log.exception("sequencer: a batch of %d entries failed", len(batch))
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(SequencingFailed())
            if self._stopping:
                return

    async def _commit_isolating(self, batch: list[_Pending]) -> None:
        """Sequence ``batch``; if its transaction fails, its halves apart (module docstring)."""
        budget = MAX_ISOLATION_COMMITS

        async def attempt(part: list[_Pending]) -> None:
            nonlocal budget
            try:
                written = await self._write(part)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                live = [pending for pending in part if not pending.future.done()]
                if len(live) > 1 and budget >= 2 and not db.unreachable(exc):
                    budget -= 2
                    log.warning(
                        "sequencer: a batch of %d entries was refused (%s: %s); sequencing its halves apart",
                        len(live),
                        type(exc).__name__,
                        str(exc)[:200],
                    )
                    middle = len(live) // 2
                    await attempt(live[:middle])
                    await attempt(live[middle:])
                    return
                log.error("sequencer: %d entries could not be sequenced", len(live), exc_info=exc)
                for pending in live:
                    pending.future.set_exception(SequencingFailed())
                return
            if written is not None:
                await self._answer(*written)

        await attempt(batch)

    async def _write(
        self, batch: list[_Pending]
    ) -> tuple[list[_Pending], int, SignedTreeHead, list[bytes], dict[merkle.NodeId, bytes]] | None:
        """The transaction: ``(accepted, old size, new STH, leaf hashes, known nodes)``, or ``None``
        when every entry was refused."""
        async with in_transaction() as conn:
            await repository.lock_sequencer(conn)
            previous = await repository.latest_sth(conn)
            if previous is None:
                raise RuntimeError("the log has no STH 0: run `nexo db push` or start the server once")
            accepted = await self._claim(conn, batch)
            if not accepted:
                return None
            size = previous.tree_size
            leaves = [pending.leaf for pending in accepted]
            hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
            frontier = self._frontier_of(previous)
            if frontier is None:
                frontier = await repository.get_nodes(merkle.root_nodes(size), conn)
            created = merkle.appended_nodes(size, frontier, hashes)
            new_size = size + len(leaves)
            known = {**frontier, **created}
            root = merkle.root_from_nodes(new_size, known)
            await repository.append(conn, size, leaves, created)
            groups: dict[str, list[tuple[Any, int]]] = {}
            for offset, pending in enumerate(accepted):
                groups.setdefault(pending.kind, []).append((pending.payload, size + offset))
            for kind, items in groups.items():
                await self.writers[kind].write(conn, items)
            head = sth_mod.next_head(previous, new_size, root, int(time.time() * 1000))
            signed = sth_mod.sign(head, self.key)
            await repository.add_sth(conn, signed)
            await repository.bump_sth_counters(conn, signed)
        return accepted, size, signed, hashes, known

    async def _answer(
        self,
        accepted: list[_Pending],
        size: int,
        signed: SignedTreeHead,
        hashes: list[bytes],
        known: dict[merkle.NodeId, bytes],
    ) -> None:
        """After the commit: each caller gets its leaf, the STH and an inclusion proof."""
        new_size = signed.tree_size
        self._remember_frontier(signed, known)
        STHS_SIGNED.inc()
        LEAVES_APPENDED.inc(len(accepted))
        BATCH_SIZE.observe(len(accepted))
        ranges = [merkle.inclusion_ranges(size + offset, new_size) for offset in range(len(accepted))]
        distinct = {item for path in ranges for item in path}
        missing = merkle.nodes_for(distinct) - known.keys()
        if missing:
            known.update(await repository.get_nodes(missing))
        hashed = merkle.hash_ranges(distinct, known)
        sth_json = signed.to_json()
        now = time.perf_counter()
        for offset, pending in enumerate(accepted):
            result = Sequenced(
                leaf_index=size + offset,
                leaf=pending.leaf,
                leaf_hash=hashes[offset],
                sth=signed,
                inclusion_proof=[hashed[item] for item in ranges[offset]],
                sth_json=sth_json,
            )
            SEQUENCE_LATENCY.observe(now - pending.queued)
            if not pending.future.done():
                pending.future.set_result(result)

    def _frontier_of(self, latest: SignedTreeHead) -> dict[merkle.NodeId, bytes] | None:
        """The root nodes of ``latest``'s tree if this sequencer made it (saves a read per batch).

        Matched on size and root hash, so an STH another worker or instance signed
        meanwhile is never mistaken for ours.
        """
        cached = self._frontier
        if cached is None or cached[0] != (latest.tree_size, latest.root_hash):
            return None
        return cached[1]

    def _remember_frontier(self, head: SignedTreeHead, known: dict[merkle.NodeId, bytes]) -> None:
        wanted = merkle.root_nodes(head.tree_size)
        if all(node in known for node in wanted):
            self._frontier = ((head.tree_size, head.root_hash), {node: known[node] for node in wanted})

    async def _claim(self, conn: BaseDBAsyncClient, batch: list[_Pending]) -> list[_Pending]:
        by_kind: dict[str, list[_Pending]] = {}
        for pending in batch:
            by_kind.setdefault(pending.kind, []).append(pending)
        refused: set[int] = set()
        for kind, items in by_kind.items():
            verdicts = await self.writers[kind].claim(conn, [item.payload for item in items])
            refused.update(id(item) for item, ok in zip(items, verdicts, strict=True) if not ok)
        for pending in batch:
            if id(pending) in refused and not pending.future.done():
                pending.future.set_exception(Rejected(pending.kind))
        return [pending for pending in batch if id(pending) not in refused]


async def ensure_genesis(origin: str, key: Ed25519PrivateKey) -> SignedTreeHead:
    """Make STH 0 (the empty tree) unless the log has one; return the latest STH."""
    from nexo import counters

    await counters.add("sths", 0)
    await counters.add("sth_latest_timestamp_ms", 0)
    async with in_transaction() as conn:
        await repository.lock_sequencer(conn)
        latest = await repository.latest_sth(conn)
        if latest is not None:
            return latest
        genesis = sth_mod.sign(sth_mod.genesis_head(origin, int(time.time() * 1000)), key)
        await repository.add_sth(conn, genesis)
        await repository.bump_sth_counters(conn, genesis)
        log.info("transparency log %s started: STH 0 (empty tree) signed", origin)
        return genesis
