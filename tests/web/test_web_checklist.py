"""The console's checklist is a pure function of metric samples."""

from __future__ import annotations

from nexo.web.checklist import Sample, evaluate, health_p95, series

INF = float("inf")


def rows(history: list[Sample], now_ms: int = 100_000, max_age: float = 60) -> dict[str, bool]:
    return {r.key: r.ok for r in evaluate(history, now_ms=now_ms, sth_max_age=max_age)}


def test_health_p95_is_the_bucket_that_holds_the_95th_request() -> None:
    then = Sample(t=0, health_buckets={0.1: 10, 0.5: 10, INF: 10})
    fast = Sample(t=60, health_buckets={0.1: 110, 0.5: 110, INF: 110})
    slow = Sample(t=60, health_buckets={0.1: 20, 0.5: 110, INF: 110})
    assert health_p95(fast, then) == 0.1
    assert health_p95(slow, then) == 0.5
    assert health_p95(then, then) is None
    assert not rows([then, slow], now_ms=60_000)["health"]


def test_each_row_turns_red_on_its_own_condition_and_reads_differences() -> None:
    base = Sample(t=0, sth_index=3, sth_timestamp_ms=50_000, ratelimit_refused=7, refresh_reuse=1)
    assert all(rows([base, Sample(t=61, sth_index=3, sth_timestamp_ms=90_000, ratelimit_refused=7,
                                  refresh_reuse=1)]).values())
    broken = Sample(t=61, sth_index=3, sth_timestamp_ms=10_000, ratelimit_refused=9, refresh_reuse=2,
                    ws_closes={"1011": 1})
    result = rows([base, broken])
    assert result == {"health": True, "duplicates": True, "websockets": False, "sth": False,
                      "tokens": False, "ratelimit": False}


def test_plot_series_are_rates_between_samples() -> None:
    history = [Sample(t=0, messages_stored=0, sth_index=0), Sample(t=2, messages_stored=10, sth_index=1)]
    assert series(history) == {"messages_per_second": [[2, 5.0]], "sth_index": [[2, 1.0]]}


def sth_row(history: list[Sample], now_ms: int = 100_000) -> tuple[bool, str, str]:
    row = next(r for r in evaluate(history, now_ms=now_ms, sth_max_age=60, witness_max_age=30)
               if r.key == "sth")
    return row.ok, row.figure, row.remedy


def test_the_sth_row_shows_cosignatures_and_turns_red_when_the_quorum_falls_behind() -> None:
    fresh = dict(sth_index=9, sth_tree_size=20, sth_timestamp_ms=95_000, witnesses=2, witness_quorum=2)
    # Without witnesses the row says nothing about them and needs none.
    ok, figure, _ = sth_row([Sample(t=0, sth_index=9, sth_timestamp_ms=95_000)])
    assert ok and "cosign" not in figure and "witness" not in figure
    # Cosigned by both, 10 s ago: green, with the figure behind it.
    good = Sample(t=100, **fresh, cosigned_index=8, cosigned_timestamp_ms=90_000, cosigners=("w1", "w2"))
    ok, figure, remedy = sth_row([good])
    assert ok and remedy == ""
    assert "cosigned: STH #8 by 2 of 2 witnesses (quorum 2: w1, w2), signed 10 s ago (limit 30 s)" in figure
    # The quorum-cosigned STH is older than the limit: red, with the witnesses' remedy only.
    stale = Sample(t=100, **fresh, cosigned_index=3, cosigned_timestamp_ms=60_000, cosigners=("w1", "w2"))
    ok, figure, remedy = sth_row([stale])
    assert not ok and "signed 40 s ago" in figure
    assert "nexo doctor" in remedy and "heartbeat" not in remedy
    # A witness fails: fewer than the quorum are up, red at once, the error shown.
    down = Sample(t=100, **fresh, cosigned_index=8, cosigned_timestamp_ms=90_000, cosigners=("w1", "w2"),
                  witness_errors=("w2: error: ConnectError",))
    ok, figure, _ = sth_row([down])
    assert not ok and "failing: w2: error: ConnectError" in figure
    # ... unless the quorum does not need it.
    assert sth_row([Sample(t=100, **{**fresh, "witness_quorum": 1}, cosigned_index=8,
                           cosigned_timestamp_ms=90_000, cosigners=("w1",),
                           witness_errors=("w2: timeout: no answer",))])[0]
    # Nothing cosigned yet: green while the console has waited less than the limit, then red.
    first = Sample(t=80, **fresh)
    ok, figure, _ = sth_row([first, Sample(t=100, **fresh)])
    assert ok and "no STH cosigned by the quorum (2 of 2 witnesses) yet, waited 20 s" in figure
    assert not sth_row([first, Sample(t=111, **fresh)])[0]
    # Both promises broken: both remedies.
    ok, _, remedy = sth_row([Sample(t=100, **{**fresh, "sth_timestamp_ms": 0})], now_ms=100_000)
    assert not ok and "heartbeat" in remedy and "nexo doctor" not in remedy
    ok, _, remedy = sth_row([Sample(t=100, **{**fresh, "sth_timestamp_ms": 0}, cosigned_index=1,
                                    cosigned_timestamp_ms=0, cosigners=("w1", "w2"))])
    assert not ok and "heartbeat" in remedy and "nexo doctor" in remedy
