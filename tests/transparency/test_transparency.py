"""The transparency log's public read API and start-up checks, on a real server."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import httpx
import pytest

from contracts.client import Account
from contracts.server import LocalServer, ServerFailed
from nexo.transparency import merkle
from nexo.transparency import sth as sth_mod
from nexo.transparency.sth import SignedTreeHead
from tests.conftest import ServerFactory, db_execute

pytestmark = pytest.mark.server


def _key_path(server: LocalServer) -> Path:
    configured = server.env.get("NEXO_SIGNING_KEY_FILE")
    return Path(configured) if configured else server.data_dir / "sth_signing.key"


def _get(server: LocalServer, path: str, **params: object) -> httpx.Response:
    return httpx.get(f"{server.base_url}{path}", params=params, timeout=10)


def test_sth_zero_is_the_signed_empty_tree(server: LocalServer) -> None:
    key = _get(server, "/api/log/key").json()
    assert key["algorithm"] == "Ed25519" and key["origin"] == "nexo.local/log"
    public = base64.b64decode(key["public_key"])
    assert base64.b64decode(key["key_id"]) == sth_mod.key_id(key["origin"], public)
    first = _get(server, "/api/sth/0").json()
    head = SignedTreeHead.from_json(first)
    sth_mod.verify(head, public)
    assert head.index == 0 and head.tree_size == 0
    assert head.root_hash == merkle.EMPTY_ROOT and head.prev_sth_hash == bytes(32)
    assert _get(server, "/api/sth", start=0, limit=1).json() == {"sths": [first]}
    latest = SignedTreeHead.from_json(_get(server, "/api/sth/latest").json())
    sth_mod.verify(latest, public)
    note = _get(server, "/api/log/checkpoint")
    assert note.headers["content-type"].startswith("text/plain")
    assert sth_mod.parse_signed_note(note.text, key["origin"], public) == latest
    health = _get(server, "/api/health").json()
    assert health["sth_count"] >= 1 and health["sth_latest_index"] == health["sth_count"] - 1


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/api/sth/abc", {}, "invalid_parameter"),
        ("/api/sth/-1", {}, "invalid_parameter"),
        ("/api/sth/999999", {}, "out_of_range"),
        ("/api/sth", {"limit": 1001}, "limit_exceeded"),
        ("/api/sth", {"start": -1}, "invalid_parameter"),
        ("/api/sth", {"limit": "x"}, "invalid_parameter"),
        ("/api/log/entries", {"start": 0}, "invalid_parameter"),
        ("/api/log/entries", {"start": 5, "end": 2}, "out_of_range"),
        ("/api/log/entries", {"start": 10**9, "end": 10**9}, "out_of_range"),
        ("/api/log/proof/inclusion", {"leaf_index": 0}, "invalid_parameter"),
        ("/api/log/proof/inclusion", {"leaf_index": 0, "tree_size": 10**9}, "out_of_range"),
        ("/api/log/proof/inclusion", {"leaf_index": "1e3", "tree_size": 2}, "invalid_parameter"),
        ("/api/log/proof/consistency", {"first": 0, "second": 0}, "out_of_range"),
        ("/api/log/proof/consistency", {"first": 3, "second": 2}, "out_of_range"),
        ("/api/log/proof/consistency", {"first": 1, "second": 10**9}, "out_of_range"),
        ("/api/log/proof/consistency", {"first": "a", "second": 2}, "invalid_parameter"),
    ],
)
def test_bad_parameters_are_400_with_a_code(
    server: LocalServer, path: str, params: dict[str, object], code: str
) -> None:
    response = _get(server, path, **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


def test_missing_or_foreign_key_refuses_to_start(make_server: ServerFactory) -> None:
    first = make_server()
    key_path = _key_path(first)
    assert key_path.stat().st_mode & 0o777 == 0o600
    original = _get(first, "/api/log/key").json()
    first.stop()

    saved = key_path.read_bytes()
    key_path.unlink()
    with pytest.raises(ServerFailed) as missing:
        first.start(timeout=30)
    assert "signing key" in str(missing.value) and "missing" in str(missing.value)
    assert not key_path.exists(), "a new key must never be made silently"

    other = make_server()
    other.stop()
    shutil.copy(_key_path(other), key_path)
    with pytest.raises(ServerFailed) as foreign:
        first.start(timeout=30)
    assert "does not match" in str(foreign.value)

    key_path.write_bytes(saved)
    first.start()
    assert _get(first, "/api/log/key").json() == original


def test_signing_key_file_setting_and_origin(make_server: ServerFactory, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "log.pem"
    server = make_server({"NEXO_SIGNING_KEY_FILE": str(key_file), "NEXO_LOG_ORIGIN": "example.test/log"})
    assert key_file.exists() and not (server.data_dir / "sth_signing.key").exists()
    info = _get(server, "/api/log/key").json()
    assert info["origin"] == "example.test/log"
    assert _get(server, "/api/sth/latest").json()["origin"] == "example.test/log"
    server.stop()
    server.env["NEXO_LOG_ORIGIN"] = "other.test/log"
    with pytest.raises(ServerFailed) as changed:
        server.start(timeout=30)
    assert "NEXO_LOG_ORIGIN" in str(changed.value)


def test_health_keeps_counting_sths_when_a_counter_row_is_lost(make_server: ServerFactory) -> None:
    server = make_server()
    account = Account.create(server.base_url)
    db_execute(server, "DELETE FROM counters WHERE name = 'sth_latest_timestamp_ms'")
    for n in range(2):
        response = httpx.post(
            f"{server.base_url}/api/devices",
            json={"name": f"d{n}", "public_key": base64.b64encode(bytes(32)).decode(), "key_type": "x25519"},
            headers=account.headers,
            timeout=10,
        )
        assert response.status_code == 201, response.text
    latest = _get(server, "/api/sth/latest").json()
    deadline = time.monotonic() + 5  # health reads the counters every 0.25 s
    while (health := _get(server, "/api/health").json())["sth_count"] != latest["index"] + 1:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    assert health["sth_latest_index"] == latest["index"]
    assert 0 <= health["sth_latest_age_seconds"] < 60
