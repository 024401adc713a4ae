"""Logs, files and secrets (issue 14, finding 7; docs/security.md "Logs, files and secrets").

Attacks: a username with newlines that forges monitoring lines; a data directory,
database and export any local user can read (password hashes, messages); a
development secret file that is empty or short; auth tables that only grow.
"""

from __future__ import annotations

import importlib.metadata
import stat
import time
from pathlib import Path

import httpx
import pytest

from contracts.client import Account
from contracts.server import LocalServer, run_nexo
from tests.conftest import ServerFactory, db_scalar

pytestmark = pytest.mark.server

FORGED = "2031-01-01 00:00:00,000 critical nexo.auth [1] forged alert"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_username_with_control_characters_cannot_forge_a_log_line(server: LocalServer) -> None:
    for separator in ("\n", "\r\n", "\r", "\u2028", "\x1b[2K\r"):
        for password in ("wrong-password", "x" * 2000):
            response = httpx.post(
                f"{server.base_url}/api/auth/login",
                json={"username": f"x{separator}{FORGED}", "password": password},
                timeout=30,
            )
            assert response.status_code in (400, 401), response.text
    time.sleep(0.5)  # the access log is written at the end of the event loop's turn
    lines = server.log_text().replace("\r\n", "\n").split("\n")
    for line in lines:
        assert not line.startswith("2031-01-01"), line
        assert "\r" not in line and "\u2028" not in line and "\x1b" not in line, repr(line)


def test_the_data_directory_and_every_file_nexo_creates_are_private(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = make_server({"DATABASE_URL": ""})  # SQLite: the database lives in the data dir
    account = Account.create(server.base_url)
    httpx.post(
        f"{server.base_url}/api/messages",
        json={"message_id": "6f1c2a4e-8d8b-4c1e-9a57-2f0e6d7c1b11", "to": account.username, "body": "x"},
        headers=account.headers,
        timeout=30,
    ).raise_for_status()
    data = server.data_dir
    key = Path(server.env["NEXO_SIGNING_KEY_FILE"]) if "NEXO_SIGNING_KEY_FILE" in server.env else None
    assert _mode(data) == 0o700
    for name in ("nexo.db", "nexo.db-wal", "nexo.db-shm"):
        assert _mode(data / name) == 0o600, name
    signing_key = key or data / "sth_signing.key"
    assert _mode(signing_key) == 0o600

    export = tmp_path / "exports" / "e.jsonl.gz"
    env = {"JWT_SECRET": server.env["JWT_SECRET"], "NEXO_DATA_DIR": str(data), "DATABASE_URL": ""}
    result = run_nexo(["db", "export", "--out", str(export)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert _mode(export) == 0o600
    assert _mode(export.parent) == 0o700

    # A data directory an older Nexo left readable is made private at the next start.
    server.stop()
    data.chmod(0o755)
    (data / "nexo.db").chmod(0o644)
    server.start()
    assert _mode(data) == 0o700
    assert _mode(data / "nexo.db") == 0o600
    assert "made private" in server.log_text()


@pytest.mark.parametrize("content", ["", "\n", "short-secret", "change_me"])
def test_nexo_dev_refuses_an_empty_or_weak_secret_file(tmp_path: Path, content: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "dev_jwt_secret").write_text(content)
    result = run_nexo(["dev", "--port", "0"], {"JWT_SECRET": "", "NEXO_DATA_DIR": str(data)}, tmp_path, 60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "dev_jwt_secret" in result.stderr and "delete the file" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _count(server: LocalServer, table: str) -> int:
    return int(db_scalar(server, f"SELECT COUNT(*) FROM {table}"))


def test_expired_auth_rows_are_pruned_on_schedule(make_server: ServerFactory) -> None:
    server = make_server(
        {
            "NEXO_PRUNE_INTERVAL": "1",
            "NEXO_LOGIN_LOCKOUT_WINDOW": "1",
            "NEXO_REFRESH_TOKEN_TTL": "6",
            "NEXO_ACCESS_TOKEN_TTL": "5",
        }
    )
    account = Account.create(server.base_url)
    account.relogin()
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(3):
            wrong = {"username": account.username, "password": "wrong-password"}
            assert client.post("/api/auth/login", json=wrong).status_code == 401
        assert client.post("/api/auth/logout", headers=account.headers).status_code == 200
    assert _count(server, "login_failures") >= 3
    assert _count(server, "sessions") >= 2
    deadline = time.monotonic() + 30
    tables = ("login_failures", "refresh_tokens", "sessions")
    while any(_count(server, table) for table in tables) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {table: _count(server, table) for table in tables} == dict.fromkeys(tables, 0)
    # Pruning takes only what is dead: a new login works and keeps its rows.
    fresh = Account(server.base_url, account.username, account.password, account.user_id, "", "")
    fresh.relogin()
    me = httpx.get(f"{server.base_url}/api/me", headers=fresh.headers, timeout=30)
    assert me.status_code == 200
    assert _count(server, "sessions") == 1 and _count(server, "refresh_tokens") == 1


def test_pyjwt_floor_excludes_the_cve_2024_53861_release() -> None:
    requirements = importlib.metadata.requires("nexo") or []
    pyjwt = [r for r in requirements if r.lower().startswith("pyjwt")]
    assert pyjwt and ">=2.10.1" in pyjwt[0], pyjwt
    assert tuple(int(p) for p in importlib.metadata.version("pyjwt").split(".")[:3]) >= (2, 10, 1)
