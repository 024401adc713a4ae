"""``nexo devices review``: recent registrations and revocations from the local database."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.client import Account
from contracts.server import run_nexo
from nexo.devices.commands import parse_since
from tests.conftest import ServerFactory

pytestmark = pytest.mark.server


def test_parse_since() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2026-01-01", now) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_since("yesterday", now)


def test_review_lists_registrations_and_revocations(make_server: ServerFactory) -> None:
    server = make_server({"NEXO_RATE_LIMIT": "100000/minute", "NEXO_AUTH_RATE_LIMIT": "100000/minute"})
    alice, bob = Account.create(server.base_url), Account.create(server.base_url)
    ids = []
    for account in (alice, bob, alice):
        response = httpx.post(
            f"{server.base_url}/api/devices",
            json={
                "name": "k",
                "public_key": base64.b64encode(os.urandom(32)).decode(),
                "key_type": "ed25519",
            },
            headers=account.headers,
            timeout=10,
        )
        assert response.status_code == 201
        ids.append(response.json()["device"]["id"])
    revoked = httpx.delete(f"{server.base_url}/api/devices/{ids[0]}", headers=alice.headers, timeout=10)
    assert revoked.status_code == 200
    env = {k: v for k, v in server.env.items() if k in ("NEXO_DATA_DIR", "DATABASE_URL")}
    env.setdefault("DATABASE_URL", "")

    result = run_nexo(["devices", "review", "--since", "7d", "--json"], env, server.data_dir)
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)["events"]
    assert [(e["action"], e["device_id"]) for e in events] == [
        ("register", ids[0]),
        ("register", ids[1]),
        ("register", ids[2]),
        ("revoke", ids[0]),
    ]
    assert [e["username"] for e in events] == [alice.username, bob.username, alice.username, alice.username]
    assert events[3]["leaf_index"] == 3

    only_bob = run_nexo(["devices", "review", "--user", bob.username.upper(), "--json"], env, server.data_dir)
    assert [e["device_id"] for e in json.loads(only_bob.stdout)["events"]] == [ids[1]]
    text = run_nexo(["devices", "review"], env, server.data_dir)
    assert text.returncode == 0 and "3 registrations, 1 revocations" in text.stdout
    future = run_nexo(["devices", "review", "--since", "2999-01-01", "--json"], env, server.data_dir)
    assert json.loads(future.stdout)["events"] == []
    bad = run_nexo(["devices", "review", "--since", "soon"], env, server.data_dir)
    assert bad.returncode == 2 and "--since" in bad.stderr
