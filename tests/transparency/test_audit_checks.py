"""The audit's checks on an in-memory log: a genuine log is clean, and each kind of damage
is named with its index (the database and HTTP sources are covered by tests/transparency/test_audit.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nexo.transparency import sth as sth_mod
from nexo.transparency.audit import Anomaly, RawSTH, RememberedHead, Report, run_audit
from nexo.transparency.leaf import canonical_leaf
from nexo.transparency.merkle import EMPTY_ROOT, MemoryTree, leaf_hash
from nexo.transparency.sth import GENESIS_PREV_HASH, SignedTreeHead, TreeHead

KEY = Ed25519PrivateKey.generate()
PUBLIC = sth_mod.public_key_bytes(KEY)
ORIGIN = "example.org/log"


@dataclass
class MemorySource:
    """A log held in lists; ``consistency`` proves from the leaves it holds."""

    sth_list: list[RawSTH] = field(default_factory=list)
    leaf_list: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)
    proofs_asked: list[tuple[int, int]] = field(default_factory=list)

    async def public_key(self) -> bytes:
        return PUBLIC

    async def totals(self) -> tuple[int, int]:
        return len(self.sth_list), len(self.leaf_list)

    async def sths(self) -> AsyncIterator[RawSTH]:
        for raw in self.sth_list:
            yield raw

    async def leaves(self) -> AsyncIterator[tuple[int, bytes, bytes | None]]:
        for entry in self.leaf_list:
            yield entry

    async def consistency(self, first: int, second: int) -> list[bytes]:
        self.proofs_asked.append((first, second))
        tree = MemoryTree(leaf_hash(leaf) for _, leaf, _ in self.leaf_list)
        return tree.consistency_proof(first, second)


def leaf(i: int) -> bytes:
    return canonical_leaf({"action": "register", "device_id": f"d{i}", "username": "zoë"})


def genuine(sizes: tuple[int, ...] = (2, 3, 3, 6)) -> MemorySource:
    """STH 0 of the empty tree, then one STH per size, over leaves 0..max(sizes)-1."""
    leaves = [leaf(i) for i in range(max(sizes))]
    tree = MemoryTree(leaf_hash(x) for x in leaves)
    signed = sth_mod.sign(TreeHead(ORIGIN, 0, 0, EMPTY_ROOT, 1000, GENESIS_PREV_HASH), KEY)
    heads = [signed]
    for n, size in enumerate(sizes, start=1):
        signed = sth_mod.sign(sth_mod.next_head(signed, size, tree.root(size), 1000 + n), KEY)
        heads.append(signed)
    return MemorySource(
        [RawSTH(h, h.sth_hash) for h in heads],
        [(i, x, leaf_hash(x)) for i, x in enumerate(leaves)],
    )


def resign(source: MemorySource, index: int, change: Callable[[TreeHead], TreeHead]) -> None:
    """Sign STH ``index`` again with ``change`` applied (the key is genuine: only the content lies)."""
    signed = sth_mod.sign(change(source.sth_list[index].sth.head), KEY)
    source.sth_list[index] = RawSTH(signed, signed.sth_hash)


def audit(source: MemorySource, **options: object) -> Report:
    return asyncio.run(run_audit(source, **options))  # type: ignore[arg-type]  # options as the tests pass them


def found(report: Report) -> set[tuple[str, int, str]]:
    return {(a.subject, a.index, a.kind.value) for a in report.anomalies}


def test_a_genuine_log_is_clean() -> None:
    source = genuine()
    report = audit(source)
    assert report.clean, report.anomalies
    assert (report.sths, report.leaves) == (5, 6)
    # Neighbours of different sizes are proved consistent; from the empty tree nothing is asked.
    assert source.proofs_asked == [(2, 3), (3, 3), (3, 6)] and report.consistency_proofs == 3
    assert report.latest is not None and report.latest["index"] == 4 and report.latest["tree_size"] == 6


def test_a_forged_signature_and_a_wrong_stated_hash() -> None:
    source = genuine()
    raw = source.sth_list[2]
    source.sth_list[2] = RawSTH(SignedTreeHead(raw.sth.head, bytes(64)), raw.stated_hash)
    source.sth_list[3] = RawSTH(source.sth_list[3].sth, bytes(32))
    assert {("sth", 2, "bad_signature"), ("sth", 3, "bad_sth_hash")} <= found(audit(source))
    assert ("sth", 2, "bad_signature") not in found(audit(source, check_signatures=False))


def test_the_genesis_must_be_sth_0_of_the_empty_tree() -> None:
    source = genuine()
    resign(source, 0, lambda h: replace(h, prev_sth_hash=b"\x01" * 32))
    assert ("sth", 0, "bad_genesis") in found(audit(source))
    source = genuine()
    source.sth_list.pop(0)
    assert ("sth", 1, "bad_genesis") in found(audit(source))


def test_index_gap_and_order() -> None:
    source = genuine()
    source.sth_list.pop(2)
    assert ("sth", 3, "index_gap") in found(audit(source))
    source = genuine()
    source.sth_list[2], source.sth_list[3] = source.sth_list[3], source.sth_list[2]
    assert ("sth", 2, "index_order") in found(audit(source))


def test_links_origin_time_and_size() -> None:
    source = genuine()
    resign(source, 2, lambda h: replace(h, prev_sth_hash=bytes(32)))
    assert ("sth", 2, "broken_link") in found(audit(source))
    source = genuine()
    resign(source, 4, lambda h: replace(h, origin="other.org/log"))
    assert ("sth", 4, "origin_changed") in found(audit(source))
    source = genuine()
    resign(source, 4, lambda h: replace(h, timestamp_ms=5))
    assert ("sth", 4, "time_reversed") in found(audit(source))
    source = genuine()
    resign(source, 3, lambda h: replace(h, tree_size=1))
    assert ("sth", 3, "size_decreased") in found(audit(source))


def test_a_malformed_hash_and_a_wrong_root() -> None:
    source = genuine()
    resign(source, 1, lambda h: replace(h, root_hash=b"\x07" * 31))
    assert ("sth", 1, "malformed_sth") in found(audit(source))
    source = genuine()
    resign(source, 4, lambda h: replace(h, root_hash=b"\x07" * 32))
    report = found(audit(source))
    assert ("sth", 4, "root_mismatch") in report and ("sth", 4, "inconsistent") in report
    source = genuine()
    resign(source, 3, lambda h: replace(h, root_hash=b"\x07" * 32))  # same size as STH 2
    assert ("sth", 3, "inconsistent") in found(audit(source))


def test_leaves_missing_altered_malformed_short_and_unsigned() -> None:
    source = genuine()
    source.leaf_list.pop(1)
    assert ("leaf", 1, "leaf_missing") in found(audit(source))
    source = genuine()
    index, data, _ = source.leaf_list[4]
    source.leaf_list[4] = (index, data, b"\x00" * 32)
    assert found(audit(source)) == {("leaf", 4, "leaf_hash_mismatch")}
    source = genuine()
    source.leaf_list[5] = (5, b'{"b":1, "a":2}', leaf_hash(b'{"b":1, "a":2}'))
    assert ("leaf", 5, "leaf_malformed") in found(audit(source))
    source = genuine()
    del source.leaf_list[5:]
    assert ("sth", 4, "tree_too_short") in found(audit(source))
    source = genuine()
    source.leaf_list.append((6, leaf(6), leaf_hash(leaf(6))))
    assert found(audit(source)) == {("leaf", 6, "unsigned_leaves")}


def test_an_empty_log() -> None:
    assert found(audit(MemorySource())) == {("sth", 0, "empty_log")}


def test_a_remembered_head_reveals_a_rewritten_or_truncated_history() -> None:
    source = genuine()
    latest = source.sth_list[3].sth
    same = RememberedHead(3, sth_mod.b64(latest.sth_hash), "state.json")
    assert audit(source, remembered=same).clean
    other = RememberedHead(3, sth_mod.b64(bytes(32)), "state.json")
    (fork,) = audit(source, remembered=other).anomalies
    assert (fork.kind.value, fork.index) == ("fork", 3) and "state.json" in fork.message
    gone = RememberedHead(9, sth_mod.b64(bytes(32)), "state.json")
    assert found(audit(source, remembered=gone)) == {("sth", 9, "fork")}


@dataclass
class Recorder:
    calls: list[tuple[str, int]] = field(default_factory=list)

    def start(self, total_leaves: int) -> None:
        self.calls.append(("start", total_leaves))

    def update(self, leaves_done: int) -> None:
        self.calls.append(("update", leaves_done))

    def done(self) -> None:
        self.calls.append(("done", 0))


def test_progress_and_each_anomaly_as_it_is_found() -> None:
    source = genuine((5000,))
    progress, seen = Recorder(), list[Anomaly]()
    source.leaf_list[4100] = (4100, b"[]", leaf_hash(b"[]"))
    report = audit(source, progress=progress, on_anomaly=seen.append)
    assert progress.calls == [("start", 5000), ("update", 4096), ("done", 0)]
    assert seen == report.anomalies
    assert found(report) == {("leaf", 4100, "leaf_malformed"), ("sth", 1, "root_mismatch")}
    assert json.loads(json.dumps(report.to_json()))["anomalies"][0]["kind"] == "leaf_malformed"


@pytest.mark.parametrize("size", [1, 2, 7])
def test_single_sth_logs_of_any_size_are_clean(size: int) -> None:
    assert audit(genuine((size,))).clean
