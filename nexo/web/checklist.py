"""The runbook's monitoring checklist, evaluated from samples of the server's metrics (pure).

A :class:`Sample` is what :mod:`nexo.web.sampler` read at one moment: cumulative
Prometheus counters (summed over workers) and the latest tree head. Each row of
the checklist compares the newest sample with the one about a minute (or an
hour) older, so every figure is a difference of the server's own counters, never
a second count kept on the side. The remedies are those of docs/troubleshooting.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HEALTH_BUDGET_SECONDS = 0.2
#: Close codes that mean "something broke" (RFC 6455 §7.4): internal error, try again later.
ABNORMAL_CLOSES = frozenset({"1011", "1013"})


@dataclass(frozen=True)
class Sample:
    """One reading. Counters are cumulative since the server started (all workers)."""

    t: float
    messages_stored: float = 0.0
    duplicates_suppressed: float = 0.0
    ws_open: float = 0.0
    ws_closes: dict[str, float] = field(default_factory=dict)
    refresh_ok: float = 0.0
    refresh_refused: float = 0.0
    refresh_reuse: float = 0.0
    failed_logins: float = 0.0
    ratelimit_refused: float = 0.0
    #: Cumulative counts of GET /api/health per latency bucket, keyed by upper bound (seconds).
    health_buckets: dict[float, float] = field(default_factory=dict)
    sth_index: int = -1
    sth_tree_size: int = 0
    sth_timestamp_ms: int = 0
    #: Witnesses configured (NEXO_WITNESSES) and how many must cosign (NEXO_WITNESS_QUORUM).
    witnesses: int = 0
    witness_quorum: int = 0
    #: The newest STH cosigned by the quorum (the one GET /api/log/checkpoint serves), -1 if none.
    cosigned_index: int = -1
    cosigned_timestamp_ms: int = 0
    #: The configured witnesses whose cosignature of that STH is stored.
    cosigners: tuple[str, ...] = ()
    #: ``"<witness>: <last error>"`` for each witness whose latest submission failed.
    witness_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    key: str
    check: str
    ok: bool
    figure: str
    remedy: str

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "check": self.check, "ok": self.ok, "figure": self.figure,
                "remedy": "" if self.ok else self.remedy}


REMEDIES = {
    "health": "Runbook, Health Response Time > 200ms: warm up with 3-5 requests; check database latency; "
              "check CPU and memory; verify no proxy or firewall delays.",
    "duplicates": "Runbook, WebSocket Duplicate Messages: check that message IDs are unique UUIDs, that the "
                  "server ACKs each message, and the unique constraint on message_id.",
    "websockets": "Runbook, WebSocket 4401 / abnormal closes: check the server log for the close reason "
                  "(1011 = internal error), verify tokens are valid and not expired.",
    "sth": "Runbook, Check STH chain for anomalies: the log has not signed a tree head (not even its "
           "heartbeat, NEXO_STH_MAX_AGE) for too long; check the server log for sequencer errors and that "
           "the database accepts writes; nexo audit checks the chain.",
    "witnesses": "Runbook, Check STH chain for anomalies: the witnesses have not cosigned a recent tree "
                 "head (NEXO_WITNESS_QUORUM), so clients that require cosignatures stop at an old one; "
                 "nexo doctor lists each witness's last error: unreachable or timeout (is the witness up?), "
                 "forbidden 403 (it does not trust the log's key), unknown_log 404 (origin not configured "
                 "there), inconsistent 422 (it saw a different tree: treat as a fork, run nexo audit).",
    "tokens": "Runbook, JWT Token Expired: clients should refresh before expiry; check JWT_SECRET is "
              "consistent across restarts; a reused refresh token means a stolen or replayed token.",
    "ratelimit": "Runbook, Rate limiting (100 req/min): a client is at its limit; find it in the access log "
                 "(status 429) and check whether it is a runaway client or an attack.",
}


def _before(history: Sequence[Sample], now: Sample, seconds: float) -> Sample:
    """The newest sample at least ``seconds`` older than ``now`` (else the oldest we have)."""
    for sample in reversed(history):
        if now.t - sample.t >= seconds:
            return sample
    return history[0] if history else now


def health_p95(now: Sample, then: Sample) -> float | None:
    """The 95th percentile of /api/health latency between two samples, as a bucket's upper bound."""
    bounds = sorted(now.health_buckets)
    deltas = [now.health_buckets[b] - then.health_buckets.get(b, 0.0) for b in bounds]
    if not deltas or deltas[-1] <= 0:  # the last bucket is +Inf: the total count
        return None
    target = 0.95 * deltas[-1]
    for bound, cumulative in zip(bounds, deltas, strict=True):
        if cumulative >= target:
            return bound
    return bounds[-1]


def cosignatures(history: Sequence[Sample], *, now_ms: int, max_age: float) -> tuple[bool, str]:
    """Whether the witnesses keep up, and the figure: the newest STH cosigned by the quorum, by
    how many of the witnesses, and how old it is ("" without witnesses).

    With a quorum configured it is broken when fewer than the quorum of witnesses are not
    failing (their latest submission failed: down, refusing, timing out), or when the
    newest quorum-cosigned STH was signed more than ``max_age`` seconds ago (none at all
    once the console has sampled for that long). The log signs a heartbeat STH at least
    every NEXO_STH_MAX_AGE and the submitter sends the latest every NEXO_WITNESS_INTERVAL,
    so a working quorum always has one that recent.
    """
    now = history[-1]
    if not now.witness_quorum:
        return True, ""
    errors = "; ".join(now.witness_errors)
    up = now.witnesses - len(now.witness_errors)
    if now.cosigned_index < 0:
        waited = now.t - history[0].t
        figure = (f"no STH cosigned by the quorum ({now.witness_quorum} of {now.witnesses} witnesses) yet, "
                  f"waited {waited:.0f} s (limit {max_age:g} s)")
        ok = up >= now.witness_quorum and waited <= max_age
    else:
        age = max(0.0, (now_ms - now.cosigned_timestamp_ms) / 1000)
        figure = (f"cosigned: STH #{now.cosigned_index} by {len(now.cosigners)} of {now.witnesses} witnesses "
                  f"(quorum {now.witness_quorum}: {', '.join(now.cosigners)}), signed {age:.0f} s ago "
                  f"(limit {max_age:g} s)")
        ok = up >= now.witness_quorum and age <= max_age
    if errors:
        figure += f"; failing: {errors}"
    return ok, figure


def evaluate(history: Sequence[Sample], *, now_ms: int, sth_max_age: float, window: float = 60,
             witness_max_age: float = float("inf")) -> list[Row]:
    """The checklist for the newest sample of ``history`` (oldest first, never empty).

    Rates look back ``window`` seconds (the runbook's minute; shorter in tests). The STH
    row also holds the witnesses' cosignatures to ``witness_max_age`` (:func:`cosignatures`).
    """
    now = history[-1]
    minute = _before(history[:-1], now, window)
    w = "minute" if window == 60 else f"{window:g} s"
    rows = []

    p95 = health_p95(now, minute)
    rows.append(Row(
        "health", "Health endpoint responds < 200ms", p95 is None or p95 <= HEALTH_BUDGET_SECONDS,
        f"no health checks in the last {w}" if p95 is None
        else f"p95 ≤ {p95 * 1000:g} ms (server side, last {w})",
        REMEDIES["health"],
    ))

    stored = now.messages_stored - minute.messages_stored
    suppressed = now.duplicates_suppressed - minute.duplicates_suppressed
    rows.append(Row(
        "duplicates", "No duplicate messages in database", True,
        f"{stored:g} stored, {suppressed:g} retries absorbed by the message_id constraint (last {w})",
        REMEDIES["duplicates"],
    ))

    closes = {code: now.ws_closes.get(code, 0.0) - minute.ws_closes.get(code, 0.0) for code in now.ws_closes}
    abnormal = sum(v for code, v in closes.items() if code in ABNORMAL_CLOSES)
    shown = ", ".join(f"{code}: {v:g}" for code, v in sorted(closes.items()) if v) or "none"
    rows.append(Row(
        "websockets", "WebSocket connections stable", abnormal == 0,
        f"{now.ws_open:g} open; closes in the last {w}: {shown}", REMEDIES["websockets"],
    ))

    age = max(0.0, (now_ms - now.sth_timestamp_ms) / 1000) if now.sth_index >= 0 else None
    index_grew = now.sth_index >= minute.sth_index
    sth_ok = age is not None and age <= sth_max_age and index_grew
    cosigned_ok, cosigned = cosignatures(history, now_ms=now_ms, max_age=witness_max_age)
    rows.append(Row(
        "sth", "STH chain index incrementing", sth_ok and cosigned_ok,
        ("no tree head yet" if age is None else f"STH #{now.sth_index}, {now.sth_tree_size} leaves, "
         f"signed {age:.0f} s ago (limit {sth_max_age:g} s)") + (f"; {cosigned}" if cosigned else ""),
        " ".join(REMEDIES[k] for k, ok in (("sth", sth_ok), ("witnesses", cosigned_ok)) if not ok),
    ))

    refreshed = now.refresh_ok - minute.refresh_ok
    refused = now.refresh_refused - minute.refresh_refused
    reused = now.refresh_reuse - minute.refresh_reuse
    failed = now.failed_logins - minute.failed_logins
    rows.append(Row(
        "tokens", "JWT tokens refreshing properly", reused == 0 and (refused == 0 or refreshed > 0),
        f"{refreshed:g} refreshes, {refused:g} refused, {reused:g} reused refresh tokens; "
        f"{failed:g} failed logins (last {w})",
        REMEDIES["tokens"],
    ))

    limited = now.ratelimit_refused - minute.ratelimit_refused
    rows.append(Row(
        "ratelimit", "Rate limiting working (100 req/min)", limited == 0,
        f"{limited:g} requests refused by the rate limiter (last {w})", REMEDIES["ratelimit"],
    ))
    return rows


def series(history: Sequence[Sample]) -> dict[str, list[list[float]]]:
    """Messages per second and STH growth between consecutive samples, for the console's plot."""
    rates: list[list[float]] = []
    sizes: list[list[float]] = []
    for previous, sample in itertools.pairwise(history):
        dt = sample.t - previous.t
        if dt > 0:
            rates.append([sample.t, max(0.0, (sample.messages_stored - previous.messages_stored) / dt)])
        sizes.append([sample.t, float(sample.sth_index)])
    return {"messages_per_second": rates, "sth_index": sizes}
