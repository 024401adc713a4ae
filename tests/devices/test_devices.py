"""Device keys through the transparency log, end to end over HTTP.

Proofs are checked with ``contracts.verify`` — written from DESIGN.md and
RFC 9162, not from the server's code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contracts import verify
from contracts.client import Account
from contracts.server import LocalServer, random_secret, run_nexo
from tests.conftest import ServerFactory, server_factory
from tests.support.devices import FAST_LIMITS, check_chain, new_key, public_key_url, register_many

pytestmark = pytest.mark.server

@pytest.fixture(scope="module")
def log_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with server_factory(tmp_path_factory.mktemp("devices")) as make:
        yield make(FAST_LIMITS)


def public_key(server: LocalServer) -> bytes:
    info = httpx.get(f"{server.base_url}/api/log/key", timeout=10).json()
    return verify.b64(info["public_key"])


def check_logged(body: dict[str, Any], log_key: bytes) -> dict[str, Any]:
    """Verify a registration/revocation answer with DESIGN.md rules only; return the leaf event."""
    sth = body["sth"]
    verify.verify_sth(sth, log_key)
    leaf = verify.b64(body["log"]["leaf"])
    assert verify.b64(body["log"]["leaf_hash"]) == verify.leaf_hash(leaf)
    verify.verify_inclusion(
        body["log"]["leaf_index"],
        sth["tree_size"],
        verify.leaf_hash(leaf),
        [verify.b64(p) for p in body["inclusion_proof"]],
        verify.b64(sth["root_hash"]),
    )
    event = json.loads(leaf)
    assert leaf == json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    return event


def test_register_answers_with_a_signed_sth_and_a_proof(log_server: LocalServer) -> None:
    account = Account.create(log_server.base_url)
    key = new_key()
    response = httpx.post(
        f"{log_server.base_url}/api/devices",
        json={"name": "laptop", "public_key": key, "key_type": "ed25519"},
        headers=account.headers,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    event = check_logged(body, public_key(log_server))
    assert event["action"] == "register"
    assert event["device_id"] == body["device"]["id"]
    assert event["user_id"] == account.user_id and event["username"] == account.username
    assert event["key_type"] == "ed25519" and event["public_key"] == key
    assert isinstance(event["timestamp_ms"], int)
    assert body["device"]["leaf_index"] == body["log"]["leaf_index"]

    mine = httpx.get(f"{log_server.base_url}/api/devices", headers=account.headers, timeout=10).json()
    assert [d["id"] for d in mine["devices"]] == [body["device"]["id"]]
    other = Account.create(log_server.base_url)
    public = httpx.get(
        f"{log_server.base_url}/api/users/{account.username.upper()}/devices",
        headers=other.headers,
        timeout=10,
    ).json()
    assert public["devices"] == [
        {
            "id": body["device"]["id"],
            "name": "laptop",
            "key_type": "ed25519",
            "public_key": key,
            "created_at": body["device"]["created_at"],
            "leaf_index": body["log"]["leaf_index"],
        }
    ]
    entries = httpx.get(
        f"{log_server.base_url}/api/log/entries",
        params={"start": body["log"]["leaf_index"], "end": body["log"]["leaf_index"]},
        timeout=10,
    ).json()["entries"]
    assert entries == [body["log"] | {"leaf_index": body["log"]["leaf_index"]}]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"name": "x", "public_key": "not base64!", "key_type": "ed25519"}, 400, "invalid_public_key"),
        (
            {"name": "x", "public_key": base64.b64encode(b"k" * 31).decode(), "key_type": "ed25519"},
            400,
            "invalid_public_key",
        ),
        (
            {"name": "x", "public_key": base64.b64encode(b"k" * 33).decode(), "key_type": "x25519"},
            400,
            "invalid_public_key",
        ),
        (
            {"name": "x", "public_key": base64.b64encode(b"k" * 32).decode(), "key_type": "rsa"},
            400,
            "unsupported_key_type",
        ),
        (
            {"name": "x", "public_key": base64.b64encode(b"k" * 32).decode(), "key_type": "Ed25519"},
            400,
            "unsupported_key_type",
        ),
        (
            {"name": "", "public_key": base64.b64encode(b"k" * 32).decode(), "key_type": "x25519"},
            400,
            "invalid_device_name",
        ),
        ({"public_key": base64.b64encode(b"k" * 32).decode(), "key_type": "x25519"}, 422, "validation_error"),
        ({"name": "x", "public_key": 5, "key_type": "x25519"}, 422, "validation_error"),
    ],
)
def test_bad_device_bodies(log_server: LocalServer, payload: dict[str, Any], status: int, code: str) -> None:
    account = Account.create(log_server.base_url)
    before = httpx.get(f"{log_server.base_url}/api/sth/latest", timeout=10).json()
    response = httpx.post(
        f"{log_server.base_url}/api/devices", json=payload, headers=account.headers, timeout=10
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    mine = httpx.get(f"{log_server.base_url}/api/devices", headers=account.headers, timeout=10).json()
    assert mine == {"devices": []}
    assert httpx.get(f"{log_server.base_url}/api/sth/latest", timeout=10).json()["tree_size"] >= 0
    assert before["index"] >= 0


def test_devices_need_a_token(log_server: LocalServer) -> None:
    for method, path in [
        ("POST", "/api/devices"),
        ("GET", "/api/devices"),
        ("DELETE", f"/api/devices/{uuid.uuid4()}"),
        ("GET", "/api/users/someone/devices"),
    ]:
        response = httpx.request(method, f"{log_server.base_url}{path}", timeout=10)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer")


def _register(server: LocalServer, account: Account, name: str = "phone") -> dict[str, Any]:
    response = httpx.post(
        f"{server.base_url}/api/devices",
        json={"name": name, "public_key": new_key(), "key_type": "x25519"},
        headers=account.headers,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_revoke_appends_a_leaf_and_only_the_owner_may(log_server: LocalServer) -> None:
    owner, stranger = Account.create(log_server.base_url), Account.create(log_server.base_url)
    registered = _register(log_server, owner)
    device_id = registered["device"]["id"]
    url = f"{log_server.base_url}/api/devices/{device_id}"

    assert httpx.delete(url, headers=stranger.headers, timeout=10).status_code == 404
    assert (
        httpx.delete(f"{log_server.base_url}/api/devices/nope", headers=owner.headers, timeout=10).status_code
        == 404
    )
    response = httpx.delete(url, headers=owner.headers, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    event = check_logged(body, public_key(log_server))
    assert event["action"] == "revoke" and event["device_id"] == device_id
    assert body["log"]["leaf_index"] > registered["log"]["leaf_index"]
    assert body["sth"]["index"] > registered["sth"]["index"]
    assert body["device"]["revoked_at"] is not None
    assert body["device"]["revoke_leaf_index"] == body["log"]["leaf_index"]

    again = httpx.delete(url, headers=owner.headers, timeout=10)
    assert again.status_code == 409 and again.json()["error"]["code"] == "device_already_revoked"
    public = httpx.get(
        f"{log_server.base_url}/api/users/{owner.username}/devices", headers=stranger.headers, timeout=10
    ).json()
    assert public == {"devices": []}
    mine = httpx.get(f"{log_server.base_url}/api/devices", headers=owner.headers, timeout=10).json()
    assert mine["devices"][0]["revoked_at"] is not None
    missing = httpx.get(
        f"{log_server.base_url}/api/users/nobody_{uuid.uuid4().hex[:8]}/devices",
        headers=owner.headers,
        timeout=10,
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "user_not_found"


def test_account_deletion_revokes_devices_through_the_log(log_server: LocalServer) -> None:
    account = Account.create(log_server.base_url)
    first, second = _register(log_server, account, "a"), _register(log_server, account, "b")
    assert account.delete() == 204
    latest = httpx.get(f"{log_server.base_url}/api/sth/latest", timeout=10).json()
    start = second["log"]["leaf_index"] + 1
    entries = httpx.get(
        f"{log_server.base_url}/api/log/entries",
        params={"start": start, "end": latest["tree_size"] - 1},
        timeout=10,
    ).json()["entries"]
    revoked = {
        json.loads(base64.b64decode(e["leaf"]))["device_id"]
        for e in entries
        if json.loads(base64.b64decode(e["leaf"]))["action"] == "revoke"
    }
    assert {first["device"]["id"], second["device"]["id"]} <= revoked


def test_concurrent_registrations_make_a_gap_free_fork_free_chain(log_server: LocalServer) -> None:
    accounts = [Account.create(log_server.base_url) for _ in range(10)]
    before = httpx.get(f"{log_server.base_url}/api/sth/latest", timeout=10).json()
    bodies = asyncio.run(register_many(log_server.base_url, accounts, 10))
    assert len(bodies) == 100
    indexes = sorted(b["log"]["leaf_index"] for b in bodies)
    assert indexes == list(range(before["tree_size"], before["tree_size"] + 100))
    log_key = public_key(log_server)
    for body in bodies:
        check_logged(body, log_key)
    sths = check_chain([log_server.base_url])
    new_sths = {b["sth"]["index"] for b in bodies}
    assert len(new_sths) < 100, "concurrent registrations should share signed tree heads"
    for body in bodies:
        assert sths[body["sth"]["index"]] == body["sth"]


def test_two_workers_and_two_instances_on_postgresql_never_fork(
    make_server: ServerFactory, pg_url: str
) -> None:
    env = {**FAST_LIMITS, "DATABASE_URL": pg_url, "JWT_SECRET": random_secret()}
    first = make_server(env, workers=2)
    second = make_server(env, workers=2)
    accounts = [Account.create(first.base_url) for _ in range(6)]

    async def both() -> list[dict[str, Any]]:
        a, b = await asyncio.gather(
            register_many(first.base_url, accounts[:3], 15),
            register_many(second.base_url, accounts[3:], 15),
        )
        return a + b

    bodies = asyncio.run(both())
    indexes = sorted(b["log"]["leaf_index"] for b in bodies)
    assert indexes == list(range(90))
    sths = check_chain([first.base_url, second.base_url])
    assert sths[-1]["tree_size"] == 90
    log_key = public_key_url(first.base_url)
    for body in bodies:
        check_logged(body, log_key)
        assert sths[body["sth"]["index"]] == body["sth"]
    # Every root recomputed from the entries: four sequencers took turns on one tree.
    audit = run_nexo(["audit", "--url", second.base_url], {}, second.data_dir)
    assert audit.returncode == 0 and "the chain is intact" in audit.stdout, audit.stdout + audit.stderr
