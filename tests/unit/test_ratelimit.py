"""The limiter in process: moving-window decisions and header formatting."""

from __future__ import annotations

import pytest

from nexo.config import RateLimit
from nexo.ratelimit import Bucket, Decision, Limiter, rate_limit_headers, redis_storage_uri


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


@pytest.mark.parametrize(
    ("url", "uri"),
    [
        ("redis://127.0.0.1:6379/0", "async+redis://127.0.0.1:6379/0"),
        ("rediss://h:6380", "async+rediss://h:6380"),
        ("unix:///run/redis.sock?db=1", "async+redis+unix:///run/redis.sock?db=1"),
    ],
)
def test_redis_urls_map_to_limits_schemes(url: str, uri: str) -> None:
    assert redis_storage_uri(url) == uri


def test_redis_prefix_setting_is_validated() -> None:
    from nexo.config import ConfigError, Settings

    secret = "s" * 40
    assert Settings.from_env({"JWT_SECRET": secret}).redis_prefix == "nexo"
    assert (
        Settings.from_env({"JWT_SECRET": secret, "NEXO_REDIS_PREFIX": "prod-eu:1"}).redis_prefix
        == "prod-eu:1"
    )
    with pytest.raises(ConfigError, match="NEXO_REDIS_PREFIX"):
        Settings.from_env({"JWT_SECRET": secret, "NEXO_REDIS_PREFIX": "bad prefix"})
