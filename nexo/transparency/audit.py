"""``nexo audit``: verify the whole STH chain and every leaf, and name each anomaly.

Checks, in one pass over the STHs and the leaves (both in index order):

- every STH's Ed25519 signature against the log key, and its ``sth_hash``;
- STH 0 is the empty tree with a zero previous hash;
- indexes step by one, ``prev_sth_hash`` links to the previous ``sth_hash``,
  ``tree_size`` and ``timestamp_ms`` never go down, the origin never changes;
- a consistency proof (served by the log) between each pair of neighbours;
- every leaf's hash (recomputed from its bytes) against the one the log
  stores or serves, no missing leaf, each leaf canonical JSON;
- every STH's root recomputed from the leaves (a compact range: O(log n) memory);
- no leaf beyond the latest STH;
- with ``--checkpoint FILE``, that the STH remembered from the last clean
  audit is still in the chain unchanged (a rewritten history is a fork).

Sources: the local database (``LocalSource``) or a deployment's public API
only (``RemoteSource``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import httpx

from nexo.config import Witness
from nexo.transparency import merkle
from nexo.transparency import sth as sth_mod
from nexo.transparency.cosignature import Cosignature, CosignatureError
from nexo.transparency.cosignature import verify as verify_cosignature
from nexo.transparency.sth import SignedTreeHead, STHError, TreeHead


class AnomalyKind(StrEnum):
    BAD_SIGNATURE = "bad_signature"
    BAD_STH_HASH = "bad_sth_hash"
    MALFORMED_STH = "malformed_sth"
    BAD_GENESIS = "bad_genesis"
    INDEX_GAP = "index_gap"
    INDEX_ORDER = "index_order"
    BROKEN_LINK = "broken_link"
    SIZE_DECREASED = "size_decreased"
    TIME_REVERSED = "time_reversed"
    ORIGIN_CHANGED = "origin_changed"
    INCONSISTENT = "inconsistent"
    ROOT_MISMATCH = "root_mismatch"
    LEAF_HASH_MISMATCH = "leaf_hash_mismatch"
    LEAF_MISSING = "leaf_missing"
    LEAF_MALFORMED = "leaf_malformed"
    TREE_TOO_SHORT = "tree_too_short"
    UNSIGNED_LEAVES = "unsigned_leaves"
    FORK = "fork"
    EMPTY_LOG = "empty_log"
    BAD_COSIGNATURE = "bad_cosignature"


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: AnomalyKind
    subject: str  # "sth" or "leaf"
    index: int
    message: str

    def line(self) -> str:
        what = "STH" if self.subject == "sth" else "leaf"
        return f"{what} {self.index}: {self.kind.value}: {self.message}"


@dataclass
class Report:
    sths: int = 0
    leaves: int = 0
    consistency_proofs: int = 0
    latest: dict[str, Any] | None = None
    anomalies: list[Anomaly] = field(default_factory=list)
    seconds: float = 0.0
    #: Witness checks (only with configured witnesses): STHs whose valid cosignatures reach the quorum.
    witnesses: list[str] = field(default_factory=list)
    quorum: int = 0
    cosigned_sths: int = 0
    latest_quorum_index: int | None = None
    #: Per STH with cosignatures: {"index", "valid": [witness names], "quorum": bool}.
    cosigned: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.anomalies

    def summary(self) -> str:
        verdict = "the chain is intact" if self.clean else f"{len(self.anomalies)} anomalies"
        return (
            f"audited {self.sths} STHs, {self.leaves} leaves and {self.consistency_proofs} consistency "
            f"proofs in {self.seconds:.1f}s: {verdict}"
        )

    def witness_summary(self) -> str | None:
        if not self.witnesses:
            return None
        newest = "none" if self.latest_quorum_index is None else f"STH {self.latest_quorum_index}"
        return (
            f"witnesses {', '.join(self.witnesses)}: {self.cosigned_sths} STHs cosigned by the quorum of "
            f"{self.quorum}; newest {newest}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "sths": self.sths,
            "leaves": self.leaves,
            "consistency_proofs": self.consistency_proofs,
            "seconds": round(self.seconds, 3),
            "latest": self.latest,
            "anomalies": [{**asdict(a), "kind": a.kind.value} for a in self.anomalies],
            "witnesses": self.witnesses,
            "quorum": self.quorum,
            "cosigned_sths": self.cosigned_sths,
            "latest_quorum_index": self.latest_quorum_index,
            "cosigned": self.cosigned,
        }


@dataclass(frozen=True, slots=True)
class RawSTH:
    """An STH as stored or served, before any check (``stated_hash`` may be wrong)."""

    sth: SignedTreeHead
    stated_hash: bytes | None
    cosignatures: tuple[Cosignature, ...] = ()


class Source(Protocol):
    async def public_key(self) -> bytes: ...
    async def totals(self) -> tuple[int, int]: ...
    def sths(self) -> AsyncIterator[RawSTH]: ...
    def leaves(self) -> AsyncIterator[tuple[int, bytes, bytes | None]]: ...
    async def consistency(self, first: int, second: int) -> list[bytes]: ...


class CompactRange:
    """The right edge of a growing tree: the root of every prefix in O(log n) memory."""

    def __init__(self) -> None:
        self.size = 0
        self.stack: list[bytes] = []

    def append(self, value: bytes) -> None:
        stack = self.stack
        stack.append(value)
        n = self.size
        while n & 1:
            right = stack.pop()
            stack[-1] = merkle.node_hash(stack[-1], right)
            n >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return merkle.EMPTY_ROOT
        result = self.stack[-1]
        for value in reversed(self.stack[:-1]):
            result = merkle.node_hash(value, result)
        return result


class Progress:
    """A progress line on stderr for long chains (at most a few updates a second)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = max(total, 1)
        self.enabled = enabled and total >= 10_000
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        share = min(done / self.total, 1.0)
        bar = "#" * int(share * 30)
        line = f"audit [{bar:<30}] {done}/{self.total} leaves ({share:.0%})"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _canonical(leaf: bytes) -> bool:
    try:
        event = json.loads(leaf)
    except ValueError:
        return False
    if not isinstance(event, dict):
        return False
    # Sorted keys, no spaces; non-ASCII either raw UTF-8 (what Nexo writes) or \u-escaped.
    return any(
        json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only).encode() == leaf
        for ascii_only in (False, True)
    )


async def run_audit(
    source: Source,
    *,
    public_key: bytes | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
    on_anomaly: Callable[[Anomaly], None] | None = None,
    check_signatures: bool = True,
    witnesses: tuple[Witness, ...] = (),
    quorum: int = 0,
) -> Report:
    """Audit everything ``source`` holds; never raises for what it finds, only reports it.

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
    remembered = _read_checkpoint(checkpoint)
    _, total_leaves = await source.totals()
    bar = Progress(total_leaves, progress)

    leaves = source.leaves().__aiter__()
    pending_leaf: tuple[int, bytes, bytes | None] | None = None
    leaves_done = False
    tree = CompactRange()
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
            if not _canonical(leaf):
                flag(AnomalyKind.LEAF_MALFORMED, "leaf", index, "the leaf is not canonical JSON")
            tree.append(value)
            report.leaves += 1
            if report.leaves % 4096 == 0:
                bar.update(report.leaves)

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
        if remembered is not None and index == remembered["index"]:
            seen_remembered = True
            if sth_mod.b64(current.sth_hash) != remembered["sth_hash"]:
                flag(
                    AnomalyKind.FORK,
                    "sth",
                    index,
                    f"differs from the STH {index} remembered in {checkpoint} (sth_hash "
                    f"{remembered['sth_hash']}): the history was rewritten",
                )
        previous = current

    if previous is None:
        flag(AnomalyKind.EMPTY_LOG, "sth", 0, "the log has no STH at all (not even STH 0)")
    if not seen_remembered and remembered is not None:
        flag(
            AnomalyKind.FORK,
            "sth",
            int(remembered["index"]),
            f"the STH remembered in {checkpoint} is no longer in the chain: the log was truncated",
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
    bar.done()
    report.latest = previous.to_json() if previous is not None else None
    report.seconds = time.monotonic() - started
    if report.clean and checkpoint is not None and previous is not None:
        _write_checkpoint(checkpoint, previous)
    return report


def _read_checkpoint(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "index" not in data or "sth_hash" not in data:
        raise ValueError(f"{path} is not an STH remembered by nexo audit")
    return data


def _write_checkpoint(path: Path, latest: SignedTreeHead) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(latest.to_json(), indent=2) + "\n")
    tmp.replace(path)


def _summary(report: Report) -> str | None:
    if report.clean:
        return None
    shown = "; ".join(a.line() for a in report.anomalies[:10])
    more = len(report.anomalies) - 10
    return shown + (f"; and {more} more" if more > 0 else "")


async def audit_url_summary(url: str) -> str | None:
    """Full audit of a deployment through its API; ``None`` when clean (for ``nexo doctor``)."""
    async with (
        httpx.AsyncClient(timeout=30) as client,
        contextlib.aclosing(RemoteSource(url, client)) as source,
    ):
        return _summary(await run_audit(source, progress=False))


async def audit_database_summary(settings: Any) -> str | None:
    """Full audit of the open database; ``None`` when clean (for ``nexo db import``).

    Without the signing key file the rest is still checked, and the missing key is reported.
    """
    key_path = settings.signing_key_path
    source = LocalSource(key_path)
    report = await run_audit(source, progress=False, check_signatures=key_path.exists())
    if report.sths == 0 and report.leaves == 0:
        # A database that never held a log (no STH 0 yet): nothing to verify after an import.
        return None
    problems = _summary(report)
    if not key_path.exists():
        missing = f"no log signing key at {key_path}: copy it with the data (signatures unchecked)"
        return missing + (f"; {problems}" if problems else "")
    return problems


# -- sources ---------------------------------------------------------------------------------


class LocalSource:
    """The local database (SQLite or DATABASE_URL), read in pages."""

    PAGE = 20_000

    def __init__(self, key_path: Path | None) -> None:
        self.key_path = key_path

    async def public_key(self) -> bytes:
        from nexo.transparency.keys import read_key

        if self.key_path is None or not self.key_path.exists():
            raise FileNotFoundError(
                f"the log signing key {self.key_path} is not here: pass the published key with "
                "--public-key BASE64 (GET /api/log/key)"
            )
        return sth_mod.public_key_bytes(read_key(self.key_path))

    async def totals(self) -> tuple[int, int]:
        from nexo.transparency import repository

        latest = await repository.latest_sth()
        return (latest.index + 1 if latest else 0), await repository.leaf_count()

    async def sths(self) -> AsyncIterator[RawSTH]:
        from nexo.transparency import repository, witness_repository

        window: dict[int, list[Cosignature]] = {}
        window_end = -1
        async for sth, stated_hash in repository.iter_sths(self.PAGE):
            if sth.index > window_end:
                window_end = sth.index + self.PAGE - 1
                window = await witness_repository.cosignatures(sth.index, window_end)
            yield RawSTH(sth, stated_hash, tuple(window.get(sth.index, ())))

    async def leaves(self) -> AsyncIterator[tuple[int, bytes, bytes | None]]:
        from nexo.transparency import repository

        async for entry in repository.iter_leaves(self.PAGE):
            yield entry

    async def consistency(self, first: int, second: int) -> list[bytes]:
        from nexo.transparency import repository

        ranges = merkle.consistency_ranges(first, second)
        nodes = await repository.get_nodes(merkle.nodes_for(ranges))
        return merkle.build_path(ranges, nodes)


class RemoteSource:
    """A deployment's public API only (``--url``)."""

    PAGE = 1000
    #: Requests in flight at once. It reads ahead: the consistency proofs of a page of STHs
    #: and the next page of entries are fetched while the audit checks the current ones.
    #: More is slower: httpx checks every pooled connection on each request.
    CONCURRENCY = 4

    def __init__(self, base_url: str, client: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self._slots = asyncio.Semaphore(self.CONCURRENCY)
        self._proofs: dict[tuple[int, int], asyncio.Task[list[bytes]]] = {}
        self._last_size: object = None

    async def aclose(self) -> None:
        """Cancel what was read ahead and not asked for (an audit that stopped early)."""
        for task in self._proofs.values():
            task.cancel()
        await asyncio.gather(*self._proofs.values(), return_exceptions=True)
        self._proofs.clear()

    async def _get(self, path: str, **params: int) -> Any:
        async with self._slots:
            response = await self.client.get(f"{self.base_url}{path}", params=params)
        if response.status_code != 200:
            raise LookupError(f"GET {path} answered {response.status_code}: {response.text[:200]}")
        return response.json()

    async def public_key(self) -> bytes:
        info = await self._get("/api/log/key")
        return sth_mod.unb64(info["public_key"], "public_key")

    async def totals(self) -> tuple[int, int]:
        latest = await self._get("/api/sth/latest")
        return int(latest["index"]) + 1, int(latest["tree_size"])

    async def sths(self) -> AsyncIterator[RawSTH]:
        start = 0
        while True:
            page = (await self._get("/api/sth", start=start, limit=self.PAGE))["sths"]
            self._read_proofs_ahead(page)
            for item in page:
                yield _raw_from_json(item)
            if len(page) < self.PAGE:
                return
            start = int(page[-1]["index"]) + 1

    def _read_proofs_ahead(self, page: list[Any]) -> None:
        """Start fetching the proof between each pair of neighbours the audit will ask for."""
        first = self._last_size
        for item in page:
            second = item.get("tree_size") if isinstance(item, dict) else None
            if isinstance(first, int) and isinstance(second, int) and 0 < first < second:
                if (first, second) not in self._proofs:
                    self._proofs[first, second] = asyncio.create_task(self._fetch_consistency(first, second))
            first = second
        self._last_size = first

    async def leaves(self) -> AsyncIterator[tuple[int, bytes, bytes | None]]:
        latest = await self._get("/api/sth/latest")
        size = int(latest["tree_size"])
        pending = asyncio.create_task(self._entries(0, size)) if size > 0 else None
        try:
            while pending is not None:
                entries = await pending
                pending = None
                if not entries:
                    return
                start = int(entries[-1]["leaf_index"]) + 1
                if start < size:
                    pending = asyncio.create_task(self._entries(start, size))
                for entry in entries:
                    yield (
                        int(entry["leaf_index"]),
                        sth_mod.unb64(entry["leaf"], "leaf"),
                        sth_mod.unb64(entry["leaf_hash"], "leaf_hash"),
                    )
        finally:
            if pending is not None:
                pending.cancel()

    async def _entries(self, start: int, size: int) -> list[Any]:
        end = min(start + self.PAGE, size) - 1
        entries: list[Any] = (await self._get("/api/log/entries", start=start, end=end))["entries"]
        return entries

    async def consistency(self, first: int, second: int) -> list[bytes]:
        if first == second:
            return []
        ahead = self._proofs.pop((first, second), None)
        if ahead is not None:
            return await ahead
        return await self._fetch_consistency(first, second)

    async def _fetch_consistency(self, first: int, second: int) -> list[bytes]:
        body = await self._get("/api/log/proof/consistency", first=first, second=second)
        return [sth_mod.unb64(p, "consistency path") for p in body["consistency_path"]]


def _raw_from_json(item: dict[str, Any]) -> RawSTH:
    try:
        head = TreeHead(
            origin=str(item["origin"]),
            index=int(item["index"]),
            tree_size=int(item["tree_size"]),
            root_hash=sth_mod.unb64(item["root_hash"], "root_hash"),
            timestamp_ms=int(item["timestamp_ms"]),
            prev_sth_hash=sth_mod.unb64(item["prev_sth_hash"], "prev_sth_hash"),
        )
        cosigs = tuple(
            Cosignature(
                str(c["witness"]),
                sth_mod.unb64(c["key_id"], "key_id"),
                int(c["timestamp"]),
                sth_mod.unb64(c["signature"], "cosignature"),
            )
            for c in item.get("cosignatures", ())
        )
        return RawSTH(
            SignedTreeHead(head, sth_mod.unb64(item["signature"], "signature")),
            sth_mod.unb64(item["sth_hash"], "sth_hash"),
            cosigs,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed STH from the server: {exc}") from None
