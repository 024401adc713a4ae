"""The STH cadence (issue 17): at most one STH per NEXO_STH_INTERVAL, none late when idle,
a heartbeat STH over the same tree every NEXO_STH_MAX_AGE, and a warning when it is missing."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Any

import httpx
import pytest

from contracts.client import Account
from contracts.server import random_secret
from tests.conftest import BACKEND, ServerFactory, db_execute
from tests.support.audit import audit
from tests.support.devices import FAST_LIMITS, check_chain, new_key, register_many

pytestmark = pytest.mark.server

INTERVAL = 0.5


def _latest(base_url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{base_url}/api/sth/latest", timeout=10).json()
    return body


def test_200_concurrent_registrations_make_at_most_one_sth_per_interval(make_server: ServerFactory) -> None:
    # On PostgreSQL two workers share the bound: the age is read under the sequencer lock.
    workers = 2 if BACKEND == "postgres" else 1
    server = make_server(
        {**FAST_LIMITS, "NEXO_STH_INTERVAL": str(INTERVAL), "JWT_SECRET": random_secret()}, workers=workers
    )
    accounts = [Account.create(server.base_url) for _ in range(10)]
    before = _latest(server.base_url)
    started = time.monotonic()
    bodies = asyncio.run(register_many(server.base_url, accounts, 20))
    duration = time.monotonic() - started
    after = _latest(server.base_url)
    assert len(bodies) == 200
    made = after["index"] - before["index"]
    bound = math.ceil(duration / INTERVAL) + 1
    assert 1 <= made <= bound, f"{made} STHs in {duration:.2f} s: more than one per {INTERVAL} s"
    for body in bodies:  # every answer came after its leaf was in a signed STH
        assert body["log"]["leaf_index"] < body["sth"]["tree_size"]
    sths = check_chain([server.base_url])
    stamps = [s["timestamp_ms"] for s in sths[before["index"] + 1 :]]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(gap >= INTERVAL * 1000 - 1 for gap in gaps), f"STHs closer than the interval: {gaps}"


def test_a_lone_registration_after_a_quiet_interval_is_not_delayed(make_server: ServerFactory) -> None:
    interval = 5.0
    server = make_server({**FAST_LIMITS, "NEXO_STH_INTERVAL": str(interval), "JWT_SECRET": random_secret()})
    account = Account.create(server.base_url)
    with httpx.Client(base_url=server.base_url, headers=account.headers, timeout=30) as client:
        device = {"name": "a", "public_key": new_key(), "key_type": "ed25519"}
        first = client.post("/api/devices", json=device)
        assert first.status_code == 201, first.text
        time.sleep(interval + 0.5)  # the log is now quiet: the next STH is due at once
        started = time.monotonic()
        lone = client.post("/api/devices", json={**device, "name": "b", "public_key": new_key()})
        elapsed = time.monotonic() - started
    assert lone.status_code == 201, lone.text
    assert lone.json()["sth"]["index"] == first.json()["sth"]["index"] + 1
    # Generous for noisy machines, and still far below the 5 s a wrong cadence would add.
    assert elapsed < interval / 2, f"a lone registration took {elapsed:.2f} s"


def test_a_heartbeat_sth_renews_an_idle_log_and_the_audit_stays_clean(make_server: ServerFactory) -> None:
    server = make_server({**FAST_LIMITS, "NEXO_STH_MAX_AGE": "2", "JWT_SECRET": random_secret()})
    account = Account.create(server.base_url)
    response = httpx.post(
        f"{server.base_url}/api/devices",
        json={"name": "a", "public_key": new_key(), "key_type": "ed25519"},
        headers=account.headers,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    registered = response.json()["sth"]
    deadline = time.monotonic() + 20
    latest = registered
    while latest["index"] == registered["index"] and time.monotonic() < deadline:
        time.sleep(0.2)
        latest = _latest(server.base_url)
    assert latest["index"] == registered["index"] + 1, "no heartbeat STH after NEXO_STH_MAX_AGE"
    assert latest["tree_size"] == registered["tree_size"]
    assert latest["root_hash"] == registered["root_hash"]
    assert latest["timestamp_ms"] - registered["timestamp_ms"] >= 2000
    health = httpx.get(f"{server.base_url}/api/health", timeout=10).json()
    assert health["sth_max_age_seconds"] == 2 and "warnings" not in health
    code, _, report = audit(server, remote=True)
    assert code == 0 and report["anomalies"] == [], report
    code, _, report = audit(server)
    assert code == 0 and report["anomalies"] == [], report


def test_health_warns_when_the_latest_sth_is_older_than_the_max_age(make_server: ServerFactory) -> None:
    server = make_server({"NEXO_STH_MAX_AGE": "60", "JWT_SECRET": random_secret()})
    # Behind the server's back: the counter health reads says the latest STH is an hour old.
    db_execute(
        server,
        "UPDATE counters SET value = ? WHERE name = 'sth_latest_timestamp_ms'",
        (int(time.time() * 1000) - 3_600_000,),
    )
    deadline = time.monotonic() + 10
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.base_url}/api/health", timeout=10).json()
        if "warnings" in health:
            break
        time.sleep(0.2)
    assert health["status"] == "ok"
    assert [w["code"] for w in health["warnings"]] == ["sth_stale"], health
    assert "NEXO_STH_MAX_AGE" in health["warnings"][0]["message"]
