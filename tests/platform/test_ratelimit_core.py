"""The limiter in process: moving-window decisions and header formatting."""

from __future__ import annotations

import pytest

from nexo.platform.config import RateLimit
from nexo.platform.ratelimit import Bucket, Decision, Limiter, MemoryWindows, rate_limit_headers


async def test_memory_limiter_allows_the_budget_then_refuses() -> None:
    limiter = Limiter()
    rate = RateLimit(3, 60)
    decisions = [await limiter.hit(Bucket.API, "user:1", rate) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].retry_after == 0
    assert 59 < decisions[3].retry_after <= 60
    assert all(d.limit == 3 for d in decisions)
    # Another identity, another bucket: their own budgets.
    assert (await limiter.hit(Bucket.API, "user:2", rate)).allowed
    assert (await limiter.hit(Bucket.WS_SEND, "user:1", rate)).allowed
    assert limiter.backend == "memory"
    await limiter.close()


def test_headers_follow_the_ietf_draft_and_the_x_convention() -> None:
    decision = Decision(allowed=True, limit=100, remaining=42, reset_after=17.2, retry_after=0)
    headers = rate_limit_headers(Bucket.API, RateLimit(100, 60), decision)
    assert headers == {
        "RateLimit-Policy": '"api";q=100;w=60',
        "RateLimit": '"api";r=42;t=18',
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "42",
        "X-RateLimit-Reset": "18",
    }


def test_redis_prefix_setting_is_validated() -> None:
    from nexo.platform.config import ConfigError, Settings

    secret = "s" * 40
    assert Settings.from_env({"JWT_SECRET": secret}).redis_prefix == "nexo"
    assert (
        Settings.from_env({"JWT_SECRET": secret, "NEXO_REDIS_PREFIX": "prod-eu:1"}).redis_prefix
        == "prod-eu:1"
    )
    with pytest.raises(ConfigError, match="NEXO_REDIS_PREFIX"):
        Settings.from_env({"JWT_SECRET": secret, "NEXO_REDIS_PREFIX": "bad prefix"})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_window_is_a_moving_window_not_a_fixed_one() -> None:
    clock = FakeClock()
    windows = MemoryWindows(clock)
    rate = RateLimit(3, 60)
    assert windows.hit("api", "a", rate).allowed
    clock.now += 30
    assert windows.hit("api", "a", rate).allowed
    assert windows.hit("api", "a", rate).allowed
    refused = windows.hit("api", "a", rate)
    assert not refused.allowed
    # The first hit leaves the window 60 s after it was made: 30 s from now.
    assert refused.retry_after == pytest.approx(30.0)
    assert refused.reset_after == pytest.approx(30.0)
    clock.now += 29.9
    assert not windows.hit("api", "a", rate).allowed
    clock.now += 0.1
    allowed = windows.hit("api", "a", rate)
    assert allowed.allowed
    assert allowed.remaining == 0
    # Across what would be a fixed window's boundary the count still holds: 3 in any 60 s.
    assert not windows.hit("api", "a", rate).allowed


def test_memory_window_does_not_record_refused_hits() -> None:
    clock = FakeClock()
    windows = MemoryWindows(clock)
    rate = RateLimit(2, 10)
    windows.hit("api", "a", rate)
    windows.hit("api", "a", rate)
    for _ in range(50):  # hammering while refused does not extend the lockout
        clock.now += 0.1
        assert not windows.hit("api", "a", rate).allowed
    clock.now = 1000.0 + 10
    assert windows.hit("api", "a", rate).allowed


def test_memory_window_costs_are_all_or_nothing() -> None:
    clock = FakeClock()
    windows = MemoryWindows(clock)
    rate = RateLimit(10, 60)
    first = windows.hit("ws_send", "u", rate, cost=7)
    assert first.allowed
    assert first.remaining == 3
    over = windows.hit("ws_send", "u", rate, cost=4)
    assert not over.allowed
    assert over.remaining == 3  # nothing of the refused burst was counted
    assert windows.hit("ws_send", "u", rate, cost=3).allowed
    assert not windows.hit("ws_send", "u", rate, cost=1).allowed
    assert not windows.hit("ws_send", "v", rate, cost=11).allowed  # more than the budget: never
    clock.now += 60
    assert windows.hit("ws_send", "u", rate, cost=10).allowed


def test_memory_window_keys_are_bucket_identity_and_rate() -> None:
    windows = MemoryWindows(FakeClock())
    small, large = RateLimit(1, 60), RateLimit(5, 60)
    assert windows.hit("api", "a", small).allowed
    assert not windows.hit("api", "a", small).allowed
    assert windows.hit("auth", "a", small).allowed
    assert windows.hit("api", "b", small).allowed
    assert windows.hit("api", "a", large).allowed


def test_memory_window_sweeps_idle_keys() -> None:
    clock = FakeClock()
    windows = MemoryWindows(clock)
    short, long = RateLimit(5, 1), RateLimit(5, 3600)
    for i in range(100):
        windows.hit("api", f"ip:{i}", short)
    windows.hit("api", "patient", long)
    assert len(windows) == 101
    clock.now += MemoryWindows.SWEEP_SECONDS + 1
    windows.hit("api", "late", short)
    # Keys whose hits all left their window are gone; a long window's key stays.
    assert len(windows) == 2
    assert not windows.hit("api", "patient", long, cost=5).allowed  # its first hit still counts
    assert windows.hit("api", "patient", long, cost=4).allowed
