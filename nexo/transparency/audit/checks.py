"""The audit's checks, in one pass over the STHs and the leaves (both in index order).

Pure: everything is read through a :class:`Source` (``database.py`` or ``http.py``);
the caller keeps the remembered head and shows the progress (``transparency/commands.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from nexo.platform.config import Witness
from nexo.transparency import merkle
from nexo.transparency import sth as sth_mod
from nexo.transparency.audit.report import Anomaly, AnomalyKind, Report
from nexo.transparency.cosignature import Cosignature, CosignatureError, WitnessKey
from nexo.transparency.cosignature import verify as verify_cosignature
from nexo.transparency.leaf import is_canonical
from nexo.transparency.sth import SignedTreeHead, STHError


@dataclass(frozen=True, slots=True)
class RawSTH:
    """An STH as stored or served, before any check (``stated_hash`` may be wrong)."""

    sth: SignedTreeHead
    stated_hash: bytes | None
    cosignatures: tuple[Cosignature, ...] = ()


class Source(Protocol):
    """Where the audit reads the log: ``database.LocalSource`` or ``http.RemoteSource``."""

    async def public_key(self) -> bytes: ...
    async def totals(self) -> tuple[int, int]: ...
    def sths(self) -> AsyncIterator[RawSTH]: ...
    def leaves(self) -> AsyncIterator[tuple[int, bytes, bytes | None]]: ...
    async def consistency(self, first: int, second: int) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class RememberedHead:
    """The latest STH of the last clean audit: it must still be in the chain, unchanged."""

    index: int
    sth_hash: str  # base64, as the log serves it
    where: str  # where it was remembered (a file name), for the anomaly's message


class Progress(Protocol):
    """Told how far the audit is (every 4096 leaves)."""

    def start(self, total_leaves: int) -> None: ...
    def update(self, leaves_done: int) -> None: ...
    def done(self) -> None: ...


async def run_audit(
    source: Source,
    *,
    public_key: bytes | None = None,
    remembered: RememberedHead | None = None,
    progress: Progress | None = None,
    on_anomaly: Callable[[Anomaly], None] | None = None,
    check_signatures: bool = True,
    witnesses: tuple[Witness, ...] = (),
    quorum: int = 0,
) -> Report:
    """Audit everything ``source`` holds; never raises for what it finds, only reports it.

    With ``remembered``, that STH must still be in the chain unchanged (else a ``fork``).

    With ``witnesses``, every stored cosignature by one of them is verified
    (``cosignature/v1`` over the STH's checkpoint body) and the quorum is reported per STH;
    cosignatures by other keys are ignored.
    """
    started = time.monotonic()
    report = Report(witnesses=[w.name for w in witnesses], quorum=quorum)
    key = None
    if check_signatures:
        key = public_key if public_key is not None else await source.public_key()
    _, total_leaves = await source.totals()
    if progress is not None:
        progress.start(total_leaves)
    audit = _Audit(source, report, on_anomaly, progress, {w.name: w.key for w in witnesses}, quorum)
    previous = None
    async for raw in source.sths():
        await audit.check(raw, previous, key, remembered)
        previous = raw.sth
    await audit.finish(previous, remembered)
    if progress is not None:
        progress.done()
    report.latest = previous.to_json() if previous is not None else None
    report.seconds = time.monotonic() - started
    return report


class _Audit:
    """One pass: the STHs in index order, and the leaves read as far as each STH's size."""

    def __init__(
        self,
        source: Source,
        report: Report,
        on_anomaly: Callable[[Anomaly], None] | None,
        progress: Progress | None,
        witness_keys: dict[str, WitnessKey],
        quorum: int,
    ) -> None:
        self.source = source
        self.report = report
        self.on_anomaly = on_anomaly
        self.progress = progress
        self.witness_keys = witness_keys
        self.quorum = quorum
        self.leaves = source.leaves().__aiter__()
        self.leaves_done = False
        self.tree = merkle.CompactRange()
        self.tree_broken = False  # a missing leaf: roots can no longer be recomputed
        self.expected_index = 0
        self.seen_remembered = False

    def flag(self, kind: AnomalyKind, subject: str, index: int, message: str) -> None:
        anomaly = Anomaly(kind, subject, index, message)
        self.report.anomalies.append(anomaly)
        if self.on_anomaly is not None:
            self.on_anomaly(anomaly)

    async def check(
        self,
        raw: RawSTH,
        previous: SignedTreeHead | None,
        key: bytes | None,
        remembered: RememberedHead | None,
    ) -> None:
        """Every check of one STH, in this order (the order its anomalies are reported in)."""
        current = raw.sth
        self.report.sths += 1
        self._check_index(current.index)
        self._check_signed(raw, key)
        if previous is None:
            self._check_genesis(current)
        else:
            await self._check_link(previous, current)
        if current.tree_size >= self.tree.size and not self.tree_broken:
            await self._check_root(current)
        if self.witness_keys and raw.cosignatures:
            self._check_cosignatures(raw)
        if remembered is not None and current.index == remembered.index:
            self._check_remembered(current, remembered)

    def _check_index(self, index: int) -> None:
        expected = self.expected_index
        if index > expected:
            self.flag(
                AnomalyKind.INDEX_GAP,
                "sth",
                index,
                f"STH {expected}..{index - 1} missing: the chain jumps from {expected - 1} to {index}",
            )
        elif index < expected:
            self.flag(AnomalyKind.INDEX_ORDER, "sth", index, f"comes after STH {expected - 1}")
        self.expected_index = index + 1

    def _check_signed(self, raw: RawSTH, key: bytes | None) -> None:
        current, index = raw.sth, raw.sth.index
        if key is not None:
            try:
                sth_mod.verify(current, key)
            except STHError as exc:
                self.flag(AnomalyKind.BAD_SIGNATURE, "sth", index, str(exc))
        if raw.stated_hash is not None and raw.stated_hash != current.sth_hash:
            self.flag(
                AnomalyKind.BAD_STH_HASH, "sth", index, "sth_hash is not SHA-256(signed bytes || signature)"
            )
        if len(current.root_hash) != merkle.HASH_SIZE or len(current.prev_sth_hash) != merkle.HASH_SIZE:
            self.flag(AnomalyKind.MALFORMED_STH, "sth", index, "a hash is not 32 bytes")

    def _check_genesis(self, current: SignedTreeHead) -> None:
        index = current.index
        if index != 0 or current.tree_size != 0 or current.root_hash != merkle.EMPTY_ROOT:
            self.flag(AnomalyKind.BAD_GENESIS, "sth", index, "the first STH is not STH 0 of the empty tree")
        if current.prev_sth_hash != sth_mod.GENESIS_PREV_HASH:
            self.flag(AnomalyKind.BAD_GENESIS, "sth", index, "STH 0's previous hash is not 32 zero bytes")

    async def _check_link(self, previous: SignedTreeHead, current: SignedTreeHead) -> None:
        """The link to the previous STH: hash, origin, time, size and a consistency proof."""
        index = current.index
        if current.prev_sth_hash != previous.sth_hash:
            self.flag(
                AnomalyKind.BROKEN_LINK,
                "sth",
                index,
                f"prev_sth_hash is not the sth_hash of STH {previous.index}",
            )
        if current.origin != previous.origin:
            self.flag(AnomalyKind.ORIGIN_CHANGED, "sth", index, f"{previous.origin!r} -> {current.origin!r}")
        if current.timestamp_ms < previous.timestamp_ms:
            self.flag(
                AnomalyKind.TIME_REVERSED,
                "sth",
                index,
                f"timestamp {current.timestamp_ms} is before {previous.timestamp_ms}",
            )
        if current.tree_size < previous.tree_size:
            self.flag(
                AnomalyKind.SIZE_DECREASED,
                "sth",
                index,
                f"tree size {current.tree_size} is below {previous.tree_size}",
            )
        elif previous.tree_size > 0:
            try:
                proof = await self.source.consistency(previous.tree_size, current.tree_size)
                merkle.verify_consistency(
                    previous.tree_size, current.tree_size, previous.root_hash, current.root_hash, proof
                )
                self.report.consistency_proofs += 1
            except (merkle.ProofError, LookupError, ValueError) as exc:
                self.flag(
                    AnomalyKind.INCONSISTENT,
                    "sth",
                    index,
                    f"no valid consistency proof from STH {previous.index} "
                    f"(size {previous.tree_size}): {exc} — the log forked or was rewritten",
                )
        elif current.tree_size == previous.tree_size and current.root_hash != previous.root_hash:
            self.flag(AnomalyKind.INCONSISTENT, "sth", index, "same size as the previous STH, another root")

    async def _check_root(self, current: SignedTreeHead) -> None:
        """Grow the tree to the STH's size, checking each leaf, and compare the roots."""
        await self._grow_to(current.tree_size, current.index)
        if not self.tree_broken and self.tree.root() != current.root_hash:
            self.flag(
                AnomalyKind.ROOT_MISMATCH,
                "sth",
                current.index,
                f"the root recomputed from leaves 0..{current.tree_size - 1} differs",
            )

    async def _next_leaf(self) -> tuple[int, bytes, bytes | None] | None:
        if self.leaves_done:
            return None
        try:
            return await self.leaves.__anext__()
        except StopAsyncIteration:
            self.leaves_done = True
            return None

    async def _grow_to(self, size: int, sth_index: int) -> None:
        tree, report = self.tree, self.report
        while tree.size < size:
            item = await self._next_leaf()
            if item is None:
                self.flag(
                    AnomalyKind.TREE_TOO_SHORT,
                    "sth",
                    sth_index,
                    f"claims {size} leaves but the log holds only {tree.size}",
                )
                self.tree_broken = True
                return
            index, leaf, stated = item
            if index != tree.size:
                self.flag(AnomalyKind.LEAF_MISSING, "leaf", tree.size, f"the next leaf present is {index}")
                self.tree_broken = True
                return
            value = merkle.leaf_hash(leaf)
            if stated is not None and stated != value:
                self.flag(
                    AnomalyKind.LEAF_HASH_MISMATCH,
                    "leaf",
                    index,
                    "the leaf's bytes do not hash to the leaf hash the log holds",
                )
            if not is_canonical(leaf):
                self.flag(AnomalyKind.LEAF_MALFORMED, "leaf", index, "the leaf is not canonical JSON")
            tree.append(value)
            report.leaves += 1
            if self.progress is not None and report.leaves % 4096 == 0:
                self.progress.update(report.leaves)

    def _check_cosignatures(self, raw: RawSTH) -> None:
        """Verify the cosignatures of the configured witnesses, and whether they reach the quorum."""
        index, report = raw.sth.index, self.report
        valid = []
        for cosig in raw.cosignatures:
            key = self.witness_keys.get(cosig.name)
            if key is None:
                continue
            try:
                verify_cosignature(cosig, raw.sth.head.signed_bytes(), key)
                valid.append(cosig.name)
            except CosignatureError as exc:
                self.flag(AnomalyKind.BAD_COSIGNATURE, "sth", index, str(exc))
        met = len(set(valid)) >= self.quorum > 0
        report.cosigned.append({"index": index, "valid": sorted(set(valid)), "quorum": met})
        if met:
            report.cosigned_sths += 1
            report.latest_quorum_index = index

    def _check_remembered(self, current: SignedTreeHead, remembered: RememberedHead) -> None:
        self.seen_remembered = True
        if sth_mod.b64(current.sth_hash) != remembered.sth_hash:
            self.flag(
                AnomalyKind.FORK,
                "sth",
                current.index,
                f"differs from the STH {current.index} remembered in {remembered.where} (sth_hash "
                f"{remembered.sth_hash}): the history was rewritten",
            )

    async def finish(self, latest: SignedTreeHead | None, remembered: RememberedHead | None) -> None:
        """After the last STH: the log is not empty, the remembered STH was met, no leaf is unsigned."""
        if latest is None:
            self.flag(AnomalyKind.EMPTY_LOG, "sth", 0, "the log has no STH at all (not even STH 0)")
        if remembered is not None and not self.seen_remembered:
            self.flag(
                AnomalyKind.FORK,
                "sth",
                remembered.index,
                f"the STH remembered in {remembered.where} is no longer in the chain: the log was truncated",
            )
        extra = 0
        while (await self._next_leaf()) is not None:
            extra += 1
        if extra and not self.tree_broken:
            size = self.tree.size
            self.flag(
                AnomalyKind.UNSIGNED_LEAVES,
                "leaf",
                size,
                f"{extra} leaves beyond the latest STH ({size} leaves) are in no signed tree head",
            )
