"""``nexo doctor`` and its checklist against a real server (issue 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.server import free_port, run_nexo
from tests.conftest import ServerFactory

pytestmark = pytest.mark.server

ITEMS = (
    "Health endpoint responds < 200ms",
    "No duplicate messages in database",
    "WebSocket connections stable",
    "STH chain index incrementing",
    "JWT tokens refreshing properly",
    "Rate limiting working (100 req/min)",
)


def _lines(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        for item in ITEMS:
            if line[2:].startswith(item + ":"):
                found[item] = line
    return found


def test_doctor_walks_the_checklist(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server({"NEXO_RATE_LIMIT": "100/minute"})
    env = dict(server.env)
    result = run_nexo(["doctor", "--url", server.base_url], env, tmp_path, timeout=120)
    assert "Traceback" not in result.stderr
    lines = _lines(result.stdout)
    assert set(lines) == set(ITEMS), result.stdout
    assert result.returncode == 0, result.stdout
    for item in ITEMS:
        assert lines[item].startswith("✓"), result.stdout
    assert "4401" in lines["WebSocket connections stable"]
    assert "q=100;w=60" in lines["Rate limiting working (100 req/min)"]
    assert "max" in lines["Health endpoint responds < 200ms"]


def test_doctor_fails_when_nothing_answers(tmp_path: Path) -> None:
    env = {"JWT_SECRET": "d" * 40, "NEXO_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": ""}
    run_nexo(["db", "push"], env, tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    result = run_nexo(["doctor", "--url", url], env, tmp_path, timeout=120)
    assert result.returncode == 1
    lines = _lines(result.stdout)
    assert lines["Health endpoint responds < 200ms"].startswith("✗")
    assert lines["No duplicate messages in database"].startswith("✓")
    assert "Traceback" not in result.stdout + result.stderr


def test_operations_commands_have_help(tmp_path: Path) -> None:
    for args in (["doctor"], ["check-duplicates"], ["db", "export"], ["db", "import"]):
        result = run_nexo([*args, "--help"], {}, tmp_path, timeout=30)
        assert result.returncode == 0, (args, result.stderr)
        assert "usage: nexo" in result.stdout
