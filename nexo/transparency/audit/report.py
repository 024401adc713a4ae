"""What an audit found: each anomaly with its kind and index, and the totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


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


def anomalies_line(report: Report) -> str | None:
    """The first ten anomalies on one line; ``None`` when clean.

    For ``nexo doctor`` and ``nexo db import``.
    """
    if report.clean:
        return None
    shown = "; ".join(a.line() for a in report.anomalies[:10])
    more = len(report.anomalies) - 10
    return shown + (f"; and {more} more" if more > 0 else "")
