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
- with a remembered head (``nexo audit --state FILE``), that the STH remembered
  from the last clean audit is still in the chain unchanged (a rewritten history
  is a fork).

``checks.py`` holds the checks (pure), ``report.py`` what they find; the sources
are the local database (``database.LocalSource``) or a deployment's public API
only (``http.RemoteSource``).
"""

from nexo.transparency.audit.checks import Progress, RawSTH, RememberedHead, Source, run_audit
from nexo.transparency.audit.report import Anomaly, AnomalyKind, Report, anomalies_line

__all__ = [
    "Anomaly",
    "AnomalyKind",
    "Progress",
    "RawSTH",
    "RememberedHead",
    "Report",
    "Source",
    "anomalies_line",
    "run_audit",
]
