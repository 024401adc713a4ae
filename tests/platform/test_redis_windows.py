"""The moving window in Redis (``nexo.platform.ratelimit.RedisWindows``) against the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from nexo.platform.config import RateLimit
from nexo.platform.ratelimit import Bucket, RedisWindows
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.server


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    client = Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(f"{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_allows_the_budget_then_refuses_and_counts_down(prefix: str) -> None:
    windows = RedisWindows(REDIS_URL, prefix)
    rate = RateLimit(3, 60)
    decisions = [await windows.hit(Bucket.API, "user:1", rate) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].retry_after == 0 and all(d.limit == 3 for d in decisions)
    assert 59 < decisions[3].retry_after <= 60
    assert (await windows.hit(Bucket.API, "user:2", rate)).allowed  # another identity
    assert (await windows.hit(Bucket.WS_SEND, "user:1", rate)).allowed  # another bucket
    assert (await windows.hit(Bucket.API, "user:1", RateLimit(10, 60))).allowed  # another rate
    await windows.close()


async def test_a_cost_is_counted_all_or_none(prefix: str) -> None:
    windows = RedisWindows(REDIS_URL, prefix)
    rate = RateLimit(5, 60)
    assert (await windows.hit(Bucket.WS_SEND, "user:1", rate, cost=3)).remaining == 2
    refused = await windows.hit(Bucket.WS_SEND, "user:1", rate, cost=3)
    assert not refused.allowed and refused.remaining == 2  # nothing of it recorded
    assert (await windows.hit(Bucket.WS_SEND, "user:1", rate, cost=2)).allowed
    await windows.close()


async def test_the_window_moves_and_refusals_do_not_extend_it(prefix: str) -> None:
    windows = RedisWindows(REDIS_URL, prefix)
    rate = RateLimit(2, 1)
    assert (await windows.hit(Bucket.API, "ip:a", rate)).allowed
    await asyncio.sleep(0.5)
    assert (await windows.hit(Bucket.API, "ip:a", rate)).allowed
    for _ in range(5):  # hammering while refused records nothing
        refused = await windows.hit(Bucket.API, "ip:a", rate)
        assert not refused.allowed and 0 < refused.retry_after <= 0.5
    await asyncio.sleep(0.6)  # the first hit left the window, the second did not
    again = await windows.hit(Bucket.API, "ip:a", rate)
    assert again.allowed and again.remaining == 0
    await windows.close()


async def test_instances_share_one_count_and_keys_expire_with_the_window(prefix: str) -> None:
    first, second = RedisWindows(REDIS_URL, prefix), RedisWindows(REDIS_URL, prefix)
    rate = RateLimit(4, 30)
    results = await asyncio.gather(*(w.hit(Bucket.API, "user:7", rate) for w in [first, second] * 3))
    assert sum(d.allowed for d in results) == 4  # exact across instances, concurrently
    client = Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(f"{prefix}:ratelimit:*")]
    assert len(keys) == 1
    assert 0 < await client.pttl(keys[0]) <= 30_000
    await client.aclose()
    for windows in (first, second):
        await windows.close()
