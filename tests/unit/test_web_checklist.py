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
