"""The audit's checks, in one pass over the STHs and the leaves (both in index order).

Pure: everything is read through a :class:`Source` (``database.py`` or ``http.py``);
the caller keeps the remembered head and shows the progress (``transparency/commands.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from nexo.config import Witness
from nexo.transparency import merkle
from nexo.transparency import sth as sth_mod
from nexo.transparency.audit.report import Anomaly, AnomalyKind, Report
from nexo.transparency.cosignature import Cosignature, CosignatureError
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
    keys = {w.name: w.key for w in witnesses}

    def flag(kind: AnomalyKind, subject: str, index: int, message: str) -> None:
        anomaly = Anomaly(kind, subject, index, message)
        report.anomalies.append(anomaly)
        if on_anomaly is not None:
            on_anomaly(anomaly)

    key = b""
    if check_signatures:
        key = public_key if public_key is not None else await source.public_key()
    _, total_leaves = await source.totals()
    if progress is not None:
        progress.start(total_leaves)

    leaves = source.leaves().__aiter__()
    pending_leaf: tuple[int, bytes, bytes | None] | None = None
    leaves_done = False
    tree = merkle.CompactRange()
    tree_broken = False  # a missing leaf: roots can no longer be recomputed
    previous: SignedTreeHead | None = None
    seen_remembered = remembered is None
    expected_index = 0

    async def next_leaf() -> tuple[int, bytes, bytes | None] | None:
        nonlocal pending_leaf, leaves_done
        if pending_leaf is not None:
            item, pending_leaf = pending_leaf, None
            return item
        if leaves_done:
            return None
        try:
            return await leaves.__anext__()
        except StopAsyncIteration:
            leaves_done = True
            return None

    async def grow_to(size: int, sth_index: int) -> None:
        nonlocal pending_leaf, tree_broken
        while tree.size < size and not tree_broken:
            item = await next_leaf()
            if item is None:
                flag(
                    AnomalyKind.TREE_TOO_SHORT,
                    "sth",
                    sth_index,
                    f"claims {size} leaves but the log holds only {tree.size}",
                )
                tree_broken = True
                return
            index, leaf, stated = item
            if index != tree.size:
                flag(AnomalyKind.LEAF_MISSING, "leaf", tree.size, f"the next leaf present is {index}")
                tree_broken = True
                return
            value = merkle.leaf_hash(leaf)
            if stated is not None and stated != value:
                flag(
                    AnomalyKind.LEAF_HASH_MISMATCH,
                    "leaf",
                    index,
                    "the leaf's bytes do not hash to the leaf hash the log holds",
                )
            if not is_canonical(leaf):
                flag(AnomalyKind.LEAF_MALFORMED, "leaf", index, "the leaf is not canonical JSON")
            tree.append(value)
            report.leaves += 1
            if progress is not None and report.leaves % 4096 == 0:
                progress.update(report.leaves)

    async for raw in source.sths():
        current = raw.sth
        report.sths += 1
        index = current.index
        if index != expected_index:
            if index > expected_index:
                flag(
                    AnomalyKind.INDEX_GAP,
                    "sth",
                    index,
                    f"STH {expected_index}..{index - 1} missing: the chain jumps from "
                    f"{expected_index - 1} to {index}",
                )
            else:
                flag(AnomalyKind.INDEX_ORDER, "sth", index, f"comes after STH {expected_index - 1}")
        expected_index = index + 1
        if check_signatures:
            try:
                sth_mod.verify(current, key)
            except STHError as exc:
                flag(AnomalyKind.BAD_SIGNATURE, "sth", index, str(exc))
        if raw.stated_hash is not None and raw.stated_hash != current.sth_hash:
            flag(AnomalyKind.BAD_STH_HASH, "sth", index, "sth_hash is not SHA-256(signed bytes || signature)")
        if len(current.root_hash) != merkle.HASH_SIZE or len(current.prev_sth_hash) != merkle.HASH_SIZE:
            flag(AnomalyKind.MALFORMED_STH, "sth", index, "a hash is not 32 bytes")
        if previous is None:
            if index != 0 or current.tree_size != 0 or current.root_hash != merkle.EMPTY_ROOT:
                flag(AnomalyKind.BAD_GENESIS, "sth", index, "the first STH is not STH 0 of the empty tree")
            if current.prev_sth_hash != sth_mod.GENESIS_PREV_HASH:
                flag(AnomalyKind.BAD_GENESIS, "sth", index, "STH 0's previous hash is not 32 zero bytes")
        else:
            if current.prev_sth_hash != previous.sth_hash:
                flag(
                    AnomalyKind.BROKEN_LINK,
                    "sth",
                    index,
                    f"prev_sth_hash is not the sth_hash of STH {previous.index}",
                )
            if current.origin != previous.origin:
                flag(AnomalyKind.ORIGIN_CHANGED, "sth", index, f"{previous.origin!r} -> {current.origin!r}")
            if current.timestamp_ms < previous.timestamp_ms:
                flag(
                    AnomalyKind.TIME_REVERSED,
                    "sth",
                    index,
                    f"timestamp {current.timestamp_ms} is before {previous.timestamp_ms}",
                )
            if current.tree_size < previous.tree_size:
                flag(
                    AnomalyKind.SIZE_DECREASED,
                    "sth",
                    index,
                    f"tree size {current.tree_size} is below {previous.tree_size}",
                )
            elif previous.tree_size > 0:
                try:
                    proof = await source.consistency(previous.tree_size, current.tree_size)
                    merkle.verify_consistency(
                        previous.tree_size, current.tree_size, previous.root_hash, current.root_hash, proof
                    )
                    report.consistency_proofs += 1
                except (merkle.ProofError, LookupError, ValueError) as exc:
                    flag(
                        AnomalyKind.INCONSISTENT,
                        "sth",
                        index,
                        f"no valid consistency proof from STH {previous.index} "
                        f"(size {previous.tree_size}): {exc} — the log forked or was rewritten",
                    )
            elif current.tree_size == previous.tree_size and current.root_hash != previous.root_hash:
                flag(AnomalyKind.INCONSISTENT, "sth", index, "same size as the previous STH, another root")
        if current.tree_size >= tree.size and not tree_broken:
            await grow_to(current.tree_size, index)
            if not tree_broken and tree.root() != current.root_hash:
                flag(
                    AnomalyKind.ROOT_MISMATCH,
                    "sth",
                    index,
                    f"the root recomputed from leaves 0..{current.tree_size - 1} differs",
                )
        if keys and raw.cosignatures:
            valid = []
            for cosig in raw.cosignatures:
                key_ = keys.get(cosig.name)
                if key_ is None:
                    continue
                try:
                    verify_cosignature(cosig, current.head.signed_bytes(), key_)
                    valid.append(cosig.name)
                except CosignatureError as exc:
                    flag(AnomalyKind.BAD_COSIGNATURE, "sth", index, str(exc))
            met = len(set(valid)) >= quorum > 0
            report.cosigned.append({"index": index, "valid": sorted(set(valid)), "quorum": met})
            if met:
                report.cosigned_sths += 1
                report.latest_quorum_index = index
        if remembered is not None and index == remembered.index:
            seen_remembered = True
            if sth_mod.b64(current.sth_hash) != remembered.sth_hash:
                flag(
                    AnomalyKind.FORK,
                    "sth",
                    index,
                    f"differs from the STH {index} remembered in {remembered.where} (sth_hash "
                    f"{remembered.sth_hash}): the history was rewritten",
                )
        previous = current

    if previous is None:
        flag(AnomalyKind.EMPTY_LOG, "sth", 0, "the log has no STH at all (not even STH 0)")
    if not seen_remembered and remembered is not None:
        flag(
            AnomalyKind.FORK,
            "sth",
            remembered.index,
            f"the STH remembered in {remembered.where} is no longer in the chain: the log was truncated",
        )
    extra = 0
    while (await next_leaf()) is not None:
        extra += 1
    if extra and not tree_broken:
        flag(
            AnomalyKind.UNSIGNED_LEAVES,
            "leaf",
            tree.size,
            f"{extra} leaves beyond the latest STH ({tree.size} leaves) are in no signed tree head",
        )
    if progress is not None:
        progress.done()
    report.latest = previous.to_json() if previous is not None else None
    report.seconds = time.monotonic() - started
    return report
