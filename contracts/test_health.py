"""Runbook "Health Check": 200, the four fields, and p95 under budget after 5 warm-ups.

Latency is sampled over :data:`CONNECTIONS` connections of :data:`PER_CONNECTION`
requests each (each connection first makes one request that is not counted:
connection setup is not health's latency), so a server slow on one connection
in twenty (one slow worker, one slow instance) shows in p95 as surely as one
slow request in twenty does.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime

import httpx

from contracts.conftest import Figure, Target

WARM_UPS = 5
CONNECTIONS = 40
PER_CONNECTION = 5
FIELDS = ("status", "timestamp", "users_count", "sth_count")


def test_health_answers_200_with_runbook_fields(target: Target) -> None:
    response = httpx.get(target.url("/api/health"), timeout=10)
    assert response.status_code == 200, f"GET /api/health -> {response.status_code}"
    body = response.json()
    missing = [name for name in FIELDS if name not in body]
    assert not missing, f"health lacks {missing}"
    assert body["status"] == "ok", f"status = {body['status']!r}"
    datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    for name in ("users_count", "sth_count"):
        value = body[name]
        assert isinstance(value, int) and not isinstance(value, bool), f"{name} = {value!r} is not an integer"


def test_health_p95_is_under_budget_after_warm_up(target: Target, figure: Figure) -> None:
    with httpx.Client(timeout=10) as client:
        for _ in range(WARM_UPS):
            client.get(target.url("/api/health"))
    timings: list[float] = []
    statuses: set[int] = set()
    for _ in range(CONNECTIONS):
        with httpx.Client(timeout=10) as client:
            client.get(target.url("/api/health"))
            for _ in range(PER_CONNECTION):
                started = time.perf_counter()
                response = client.get(target.url("/api/health"))
                timings.append((time.perf_counter() - started) * 1000)
                statuses.add(response.status_code)
    p95 = statistics.quantiles(timings, n=20)[-1]
    figure(
        f"health p95 = {p95:.1f} ms (budget {target.health_budget_ms:g} ms), "
        f"p50 {statistics.median(timings):.1f} ms, max {max(timings):.1f} ms, "
        f"{len(timings)} requests on {CONNECTIONS} connections"
    )
    assert statuses == {200}, f"GET /api/health answered {sorted(statuses)} while sampled"
    assert p95 < target.health_budget_ms, f"health p95 = {p95:.1f} ms, budget {target.health_budget_ms:g} ms"
