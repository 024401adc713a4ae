"""The sequencer: queued leaves become one new signed tree head per batch.

Cadence: at most one STH per ``interval`` seconds
(``NEXO_STH_INTERVAL``). Entries wait in a queue while a commit runs or until
the latest STH is ``interval`` old; then everything queued goes into the next
transaction. A registration that finds the log quiet (latest STH older than
the interval) is sequenced at once, so the cadence adds no latency when idle.
The bound holds across workers and instances: the age is that of the latest
STH read *under the lock*; a sequencer that finds a younger one (another
worker's) waits, holding the lock, until it is ``interval`` old, so the
sequencers take turns in lock order. When nothing is
registered for ``max_age`` seconds (``NEXO_STH_MAX_AGE``) a *heartbeat* STH
over the same tree is signed, so a monitor can tell a live log from a frozen
one. Each batch's transaction:

1. take the sequencer lock (PostgreSQL advisory lock, SQLite write lock) and
   read the latest STH *inside* it, so two STHs never share an index;
2. let each entry's writer *claim* it (e.g. a revocation of a device that is
   already revoked is refused and takes no index);
3. append the leaves and the complete-subtree hashes they create
   (O(batch + log n)), write the domain rows, sign and store STH ``i + 1``,
   bump the ``sths`` counters;
4. commit, then answer every caller with its leaf index, the STH and an
   inclusion proof against it.

The queue, the cadence's wait and the heartbeat's timer are a
:class:`nexo.platform.batching.BatchQueue`. A transaction the database refuses (a row
only it objects to) is retried in halves, recursively
(:func:`nexo.platform.batching.bisect`), so one bad entry fails alone and the others of
its batch are still sequenced; at most :data:`MAX_ISOLATION_COMMITS` extra
transactions per batch, and none when the database is unreachable. Only the
transaction is retried: once it has committed, its leaves are never appended
again.

Each worker process runs one sequencer; the lock makes them take turns.
The module is a little over 400 lines so that the batch's transaction (the four steps
above) reads top to bottom in one place.
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

from nexo.platform import db
from nexo.platform.batching import BatchQueue, Heartbeat, bisect
from nexo.platform.errors import ServiceUnavailable
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

HEARTBEATS = Counter(
    "nexo_log_heartbeat_sths_total", "Signed tree heads over an unchanged tree (NEXO_STH_MAX_AGE)"
)

#: Leaves per STH at most; with ``interval`` this bounds one transaction (5,000 leaves
#: every 50 ms is 100,000 registrations/s, far above what one worker serves).
MAX_BATCH = 5000
DEFAULT_INTERVAL = 0.05
DEFAULT_MAX_AGE = 300.0
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
    writer: EntryWriter
    payload: Any
    leaf: bytes
    future: asyncio.Future[Sequenced]
    queued: float = field(default_factory=time.perf_counter)


#: What a committed transaction hands to :meth:`Sequencer._answer`: ``(accepted, old size,
#: new STH, leaf hashes, known nodes)``.
_Written = tuple[list[_Pending], int, SignedTreeHead, list[bytes], dict[merkle.NodeId, bytes]]


def _split(live: list[_Pending], error: Exception) -> bool:
    """Whether a refused batch is retried in halves: not when the database is unreachable."""
    if db.unreachable(error):
        return False
    log.warning(
        "sequencer: a batch of %d entries was refused (%s: %s); sequencing its halves apart",
        len(live),
        type(error).__name__,
        str(error)[:200],
    )
    return True


def _give_up(live: list[_Pending], error: Exception) -> None:
    log.error("sequencer: %d entries could not be sequenced", len(live), exc_info=error)
    for pending in live:
        pending.future.set_exception(SequencingFailed())


class Sequencer:
    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        max_batch: int = MAX_BATCH,
        interval: float = DEFAULT_INTERVAL,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.key = key
        self.interval = interval
        self.max_age = max_age
        #: Wall-clock ms of the latest STH this sequencer knows of (``None``: not read yet).
        self._latest_ms: int | None = None
        self._queue: BatchQueue[_Pending] = BatchQueue(
            self._commit_isolating,
            self._fail,
            max_batch=max_batch,
            name="nexo-sequencer",
            pace=self._until_due,
            heartbeat=Heartbeat(self._until_heartbeat, self._heartbeat_safely),
        )
        #: ((tree size, root hash), root nodes) of the last STH this sequencer committed.
        self._frontier: tuple[tuple[int, bytes], dict[merkle.NodeId, bytes]] | None = None

    @property
    def max_batch(self) -> int:
        return self._queue.max_batch

    def start(self) -> None:
        self._queue.start()

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        await self._queue.stop()

    async def submit(self, writer: EntryWriter, payload: Any, leaf: bytes) -> Sequenced:
        """Queue one leaf; return once it is in a committed, signed tree head.

        ``writer`` claims ``payload`` and writes its rows in the leaf's transaction.
        """
        if not self._queue.running:
            raise RuntimeError("the sequencer is not running")
        future: asyncio.Future[Sequenced] = asyncio.get_running_loop().create_future()
        self._queue.put(_Pending(writer, payload, leaf, future))
        return await future

    @staticmethod
    def _fail(batch: list[_Pending], error: BaseException) -> None:
        """A batch the sequencer could not finish: its unanswered entries fail (or are
        cancelled with the sequencer)."""
        if isinstance(error, asyncio.CancelledError):
            for pending in batch:
                if not pending.future.done():
                    pending.future.cancel()
            return
        log.error("sequencer: a batch of %d entries failed", len(batch), exc_info=error)
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(SequencingFailed())

    def _until_due(self) -> float:
        """Seconds until the next STH may be signed (``<= 0``: now)."""
        if self._latest_ms is None:
            return 0.0
        # Capped: an STH stamped ahead of this clock (another instance's skew) costs one interval.
        return min(self.interval, self._latest_ms / 1000 + self.interval - time.time())

    def _until_heartbeat(self) -> float:
        if self._latest_ms is None:
            return 0.0
        return max(0.0, self._latest_ms / 1000 + self.max_age - time.time())

    async def _heartbeat_safely(self) -> None:
        try:
            await self._heartbeat()
        except Exception:
            log.exception("sequencer: the heartbeat STH failed; retrying in %g s", self.interval)
            # Do not spin on a database that does not answer.
            self._latest_ms = int((time.time() - self.max_age + max(self.interval, 1.0)) * 1000)

    async def _heartbeat(self) -> None:
        """Sign an STH over the unchanged tree if the latest is ``max_age`` old (any worker's)."""
        async with in_transaction() as conn:
            await repository.lock_sequencer(conn)
            previous = await repository.latest_sth(conn)
            if previous is None:
                raise RuntimeError("the log has no STH 0: run `nexo db push` or start the server once")
            now_ms = int(time.time() * 1000)
            if now_ms - previous.timestamp_ms < self.max_age * 1000:
                self._latest_ms = previous.timestamp_ms
                return
            head = sth_mod.next_head(previous, previous.tree_size, previous.root_hash, now_ms)
            signed = sth_mod.sign(head, self.key)
            await repository.add_sth(conn, signed)
            await repository.bump_sth_counters(conn, signed)
        self._latest_ms = signed.timestamp_ms
        STHS_SIGNED.inc()
        HEARTBEATS.inc()
        log.info("heartbeat STH %d over the unchanged tree (%d leaves)", signed.index, signed.tree_size)

    async def _commit_isolating(self, batch: list[_Pending]) -> None:
        """Sequence ``batch``; if its transaction fails, its halves apart (module docstring)."""
        # Only the first attempt keeps the cadence: isolating a bad entry is the rare path.
        cadence = self._queue.running

        async def attempt(part: list[_Pending]) -> _Written | None:
            nonlocal cadence
            first, cadence = cadence, False
            return await self._write(part, first)

        async def then(part: list[_Pending], written: _Written | None) -> None:
            if written is not None:
                await self._answer(*written)

        await bisect(
            batch,
            attempt,
            then,
            _give_up,
            budget=MAX_ISOLATION_COMMITS,
            split=_split,
            unanswered=lambda pending: not pending.future.done(),
        )

    async def _write(self, batch: list[_Pending], cadence: bool = False) -> _Written | None:
        """The transaction: ``(accepted, old size, new STH, leaf hashes, known nodes)``, or ``None``
        when every entry was refused. With ``cadence``, first wait (under the lock) until the
        latest STH is ``interval`` old."""
        async with in_transaction() as conn:
            await repository.lock_sequencer(conn)
            previous = await repository.latest_sth(conn)
            if previous is None:
                raise RuntimeError("the log has no STH 0: run `nexo db push` or start the server once")
            # Another worker's STH is younger than the interval: wait for it *holding the
            # lock*, so the sequencers take turns in lock order instead of racing (and one
            # starving) after a rollback. Never more than one interval; an STH stamped in
            # this clock's future (skew between instances) does not hold the log back longer.
            age = time.time() - previous.timestamp_ms / 1000
            if cadence and 0 <= age < self.interval:
                await asyncio.sleep(self.interval - age)
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
            groups: dict[EntryWriter, list[tuple[Any, int]]] = {}
            for offset, pending in enumerate(accepted):
                groups.setdefault(pending.writer, []).append((pending.payload, size + offset))
            for writer, items in groups.items():
                await writer.write(conn, items)
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
        self._latest_ms = signed.timestamp_ms
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
        by_writer: dict[EntryWriter, list[_Pending]] = {}
        for pending in batch:
            by_writer.setdefault(pending.writer, []).append(pending)
        refused: set[int] = set()
        for writer, items in by_writer.items():
            verdicts = await writer.claim(conn, [item.payload for item in items])
            refused.update(id(item) for item, ok in zip(items, verdicts, strict=True) if not ok)
        for pending in batch:
            if id(pending) in refused and not pending.future.done():
                pending.future.set_exception(Rejected(type(pending.writer).__name__))
        return [pending for pending in batch if id(pending) not in refused]


async def ensure_genesis(origin: str, key: Ed25519PrivateKey) -> SignedTreeHead:
    """Make STH 0 (the empty tree) unless the log has one; return the latest STH."""
    from nexo.platform import counters

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
