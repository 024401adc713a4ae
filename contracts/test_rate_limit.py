"""Runbook "Rate limiting working (100 req/min)": 100 requests pass, the 101st gets 429 with Retry-After.

docs/ratelimit.md: the budget is per client (the user when the request carries a valid
token), so a fresh user measures it without touching anyone else's budget.
Destructive: it spends that user's minute, and the user can only be deleted
after the window, so against a URL it needs ``--allow-destructive``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from contracts.conftest import Accounts, Figure, Target

pytestmark = pytest.mark.destructive


def _window_reset(response: httpx.Response, previous: int | None) -> bool:
    """True when ``X-RateLimit-Remaining`` went up: a fixed window rolled over mid-run."""
    try:
        remaining = int(response.headers["x-ratelimit-remaining"])
    except (KeyError, ValueError):
        return False
    return previous is not None and remaining > previous


def _spend(target: Target, account: Any) -> tuple[list[int], httpx.Response, bool]:
    """``rate_limit`` requests, then one more.

    Returns the statuses, the extra response, and whether a window rolled over.
    """
    statuses: list[int] = []
    rolled = False
    remaining: int | None = None
    with httpx.Client(timeout=10, headers=account.headers) as client:
        for _ in range(target.rate_limit):
            response = client.get(target.url("/api/me"))
            statuses.append(response.status_code)
            rolled = rolled or _window_reset(response, remaining)
            remaining = int(response.headers.get("x-ratelimit-remaining", remaining or 0) or 0)
        extra = client.get(target.url("/api/me"))
    return statuses, extra, rolled


def test_the_request_after_the_budget_gets_429_with_retry_after(
    target: Target, accounts: Accounts, figure: Figure
) -> None:
    statuses, extra, rolled = _spend(target, accounts.create())
    if rolled:  # the window boundary fell inside the run; a fresh user starts a fresh window
        statuses, extra, rolled = _spend(target, accounts.create())
    passed = sum(1 for s in statuses if s == 200)
    figure(
        f"{passed} of {target.rate_limit} passed, request {target.rate_limit + 1} -> {extra.status_code}"
        f" (Retry-After {extra.headers.get('retry-after')})",
    )
    limited = [i + 1 for i, s in enumerate(statuses) if s == 429]
    assert not limited, f"limited too early: request {limited[0]} of {target.rate_limit} got 429"
    assert passed == target.rate_limit, (
        f"only {passed} of {target.rate_limit} requests got 200: {set(statuses)}"
    )
    assert extra.status_code == 429, f"request {target.rate_limit + 1} -> {extra.status_code}, expected 429"
    retry_after = extra.headers.get("retry-after")
    assert retry_after is not None, "429 without Retry-After"
    assert retry_after.isdigit() and 0 < int(retry_after) <= 60, (
        f"Retry-After {retry_after!r}: whole seconds 1-60"
    )
    assert extra.json().get("error", {}).get("code"), f"429 body is not a JSON error: {extra.text[:200]}"
    assert extra.headers.get("x-ratelimit-limit") == str(target.rate_limit), (
        f"X-RateLimit-Limit {extra.headers.get('x-ratelimit-limit')!r}, expected {target.rate_limit}"
    )
    assert extra.headers.get("x-ratelimit-remaining") == "0", "the limited response must say 0 remaining"
    for name in ("ratelimit-policy", "ratelimit", "x-ratelimit-reset"):
        assert extra.headers.get(name), f"the 429 lacks the {name} header (docs/ratelimit.md)"
