"""The foundation against a real server: health, errors, metrics, configuration refusals."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts.server import LocalServer, random_secret, run_nexo
from tests.conftest import BACKEND, ServerFactory

pytestmark = pytest.mark.server


def test_health_reports_the_runbook_fields(server: LocalServer) -> None:
    response = httpx.get(f"{server.base_url}/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert datetime.fromisoformat(body["timestamp"]).utcoffset().total_seconds() == 0
    assert isinstance(body["users_count"], int) and body["users_count"] >= 0
    assert isinstance(body["sth_count"], int) and body["sth_count"] >= 0
    assert body["database"] == ("postgresql" if BACKEND == "postgres" else "sqlite")
    assert body["version"]
    assert response.headers["x-request-id"]


def test_request_id_is_echoed_when_given(server: LocalServer) -> None:
    response = httpx.get(f"{server.base_url}/api/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/does-not-exist", 404, "not_found"),
        ("GET", "/nothing/here", 404, "not_found"),
        ("POST", "/api/health", 405, "method_not_allowed"),
        ("DELETE", "/metrics", 405, "method_not_allowed"),
    ],
)
def test_errors_are_json(server: LocalServer, method: str, path: str, status: int, code: str) -> None:
    response = httpx.request(method, f"{server.base_url}{path}")
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


def test_access_log_is_one_json_line_per_request(server: LocalServer) -> None:
    httpx.get(f"{server.base_url}/api/access-log-probe", headers={"X-Request-ID": "probe-42"})
    deadline = time.monotonic() + 5
    while "probe-42" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in server.log_text().splitlines() if "probe-42" in line)
    entry = json.loads(line[line.index("{") :])
    assert entry == {**entry, "request_id": "probe-42", "status": 404, "path": "/api/access-log-probe"}


def test_security_headers_on_every_response(server: LocalServer) -> None:
    for path in ("/api/health", "/api/missing"):
        headers = httpx.get(f"{server.base_url}{path}").headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in headers["content-security-policy"]


def test_metrics_exposition_parses_and_counts_requests(server: LocalServer) -> None:
    httpx.get(f"{server.base_url}/api/health")
    response = httpx.get(f"{server.base_url}/metrics")
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    requests = families["nexo_http_requests"]
    health = [s for s in requests.samples if s.labels.get("route") == "/api/health"]
    assert health and all(sample.value >= 1 for sample in health)
    assert "nexo_http_request_duration_seconds" in families


def test_openapi_document_is_served(server: LocalServer) -> None:
    response = httpx.get(f"{server.base_url}/docs/openapi.json")
    assert response.status_code == 200
    assert "/api/health" in response.json()["paths"]


def test_database_lands_where_configured(make_server: ServerFactory) -> None:
    server = make_server()
    assert server.data_dir.is_dir()
    # SQLite by default; with DATABASE_URL no stray SQLite file is made.
    assert (server.data_dir / "nexo.db").exists() == (BACKEND == "sqlite")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"JWT_SECRET": ""}, "JWT_SECRET is required"),
        ({"JWT_SECRET": "change_me"}, "placeholder"),
        ({"JWT_SECRET": "x" * 31}, "at least 32 bytes"),
        ({"JWT_PREVIOUS_SECRETS": "short"}, "JWT_PREVIOUS_SECRETS"),
        ({"DATABASE_URL": "mysql://u:p@h/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:p@h:notaport/db"}, "DATABASE_URL"),
        ({"PORT": "eighty"}, "PORT"),
        ({"NEXO_RATE_LIMIT": "lots"}, "NEXO_RATE_LIMIT"),
    ],
)
def test_serve_refuses_bad_configuration(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    full = {"JWT_SECRET": random_secret(), "NEXO_DATA_DIR": str(tmp_path / "data"), **env}
    result = run_nexo(["serve"], full, tmp_path, timeout=30)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sqlite_refuses_several_workers(tmp_path: Path) -> None:
    env = {"JWT_SECRET": random_secret(), "NEXO_DATA_DIR": str(tmp_path / "d"), "DATABASE_URL": ""}
    result = run_nexo(["serve", "--workers", "2", "--port", "0"], env, tmp_path, timeout=30)
    assert result.returncode == 2
    assert "PostgreSQL" in result.stderr


def test_help_on_every_command(tmp_path: Path) -> None:
    for args in (["--help"], ["serve", "--help"], ["dev", "--help"], ["db", "push", "--help"]):
        result = run_nexo(args, {}, tmp_path, timeout=30)
        assert result.returncode == 0, (args, result.stderr)
        assert "usage: nexo" in result.stdout
    version = run_nexo(["--version"], {}, tmp_path, timeout=30)
    assert version.stdout.startswith("nexo ")


def test_db_push_creates_schema_and_is_idempotent(tmp_path: Path, backend: str) -> None:
    env = {"NEXO_DATA_DIR": str(tmp_path / "data")}
    if backend == "postgres":
        from contracts.server import scratch_postgres

        with scratch_postgres() as url:
            env["DATABASE_URL"] = url
            for _ in range(2):
                result = run_nexo(["db", "push"], env, tmp_path)
                assert result.returncode == 0, result.stderr
                assert "schema version" in result.stdout
        return
    for _ in range(2):
        result = run_nexo(["db", "push"], env, tmp_path)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "nexo.db").exists()


def test_dev_secret_is_created_once_and_reused(make_server: ServerFactory) -> None:
    first = make_server({"JWT_SECRET": ""}, command=("dev",))
    secret_file = first.data_dir / "dev_jwt_secret"
    assert secret_file.exists()
    assert secret_file.stat().st_mode & 0o777 == 0o600
    content = secret_file.read_text()
    first.stop()
    second = make_server({"JWT_SECRET": "", "NEXO_DATA_DIR": str(first.data_dir)}, command=("dev",))
    assert second.data_dir != first.data_dir
    assert secret_file.read_text() == content


def test_health_is_degraded_when_postgres_goes_away(make_server: ServerFactory, pg_url: str) -> None:
    server = make_server({"DATABASE_URL": pg_url})
    assert httpx.get(f"{server.base_url}/api/health").status_code == 200
    name = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/test"

    async def drop() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())
    deadline = time.monotonic() + 15
    response = httpx.get(f"{server.base_url}/api/health")
    while response.status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.25)
        response = httpx.get(f"{server.base_url}/api/health")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert "Traceback" not in response.text


def test_metrics_sum_over_workers(make_server: ServerFactory, pg_url: str) -> None:
    server = make_server({"DATABASE_URL": pg_url}, workers=2)
    with httpx.Client() as client:
        for _ in range(40):
            # A new connection each time, so the kernel spreads them over both workers.
            client.get(f"{server.base_url}/api/health", headers={"Connection": "close"})
        text = client.get(f"{server.base_url}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    served = sum(
        sample.value
        for sample in families["nexo_http_requests"].samples
        if sample.name == "nexo_http_requests_total" and sample.labels.get("route") == "/api/health"
    )
    assert served >= 40
