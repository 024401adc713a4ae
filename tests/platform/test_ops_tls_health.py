"""Operations (issue 14, finding 8; docs/security.md "Operations: TLS and health").

A certificate made the common way (``openssl req -x509 -newkey rsa:2048 -nodes
-subj /CN=localhost``: no subjectAltName) is served; the health snapshot says how
old it is and never lags the database by more than one refresh without saying so.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from contracts.client import Account
from contracts.server import LocalServer, run_nexo
from tests.conftest import ServerFactory

pytestmark = pytest.mark.server


def openssl_cn_only(directory: Path) -> tuple[Path, Path]:
    """The certificate of the issue's command line: a CN and nothing else (no SAN)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "c.pem", directory / "k.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"),
            *("-keyout", str(key), "-out", str(cert), "-days", "2"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_cn_only_certificate_is_served(tmp_path: Path, make_server: ServerFactory) -> None:
    cert, key = openssl_cn_only(tmp_path / "pki")
    server = make_server(extra_args=("--cert", str(cert), "--key", str(key)), scheme="https")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the certificate names "localhost" in its CN only
    response = httpx.get(f"{server.base_url}/api/health", verify=context, timeout=30)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert "KeyError" not in server.log_text() and "Traceback" not in server.log_text()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_key_that_does_not_match_the_certificate_is_refused_in_one_line(tmp_path: Path) -> None:
    cert, _ = openssl_cn_only(tmp_path / "one")
    _, other_key = openssl_cn_only(tmp_path / "two")
    env = {"JWT_SECRET": "s" * 48, "NEXO_DATA_DIR": str(tmp_path / "data")}
    args = ["serve", "--port", "0", "--cert", str(cert), "--key", str(other_key)]
    result = run_nexo(args, env, tmp_path, 60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot be used together" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


#: A snapshot taken this long after a registration's answer arrived must hold it: covers
#: the health response's own transit on a loaded machine (the invariant itself is exact).
TRANSIT_MARGIN = 0.5


def test_health_says_how_old_its_snapshot_is_and_never_lags_silently(server: LocalServer) -> None:
    accounts = [Account.create(server.base_url) for _ in range(10)]
    done: list[tuple[float, int]] = []  # (client time the answer arrived, sth_count it implies)
    polls: list[tuple[float, int, int]] = []  # (snapshot time, snapshot age ms, sth_count)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            finished = asyncio.Event()

            async def register(account: Account) -> None:
                key = base64.b64encode(os.urandom(32)).decode()
                response = await client.post(
                    "/api/devices",
                    json={"name": "burst", "public_key": key, "key_type": "ed25519"},
                    headers=account.headers,
                )
                assert response.status_code == 201, response.text
                done.append((time.monotonic(), response.json()["sth"]["index"] + 1))

            async def poll() -> None:
                settle_until = None
                while settle_until is None or time.monotonic() < settle_until:
                    response = await client.get("/api/health")
                    received = time.monotonic()
                    body = response.json()
                    assert body["status"] == "ok", body
                    age = body["snapshot_age_ms"]
                    assert isinstance(age, int) and age >= 0, body
                    polls.append((received - age / 1000, age, body["sth_count"]))
                    if finished.is_set() and settle_until is None:
                        settle_until = time.monotonic() + 3.0
                    await asyncio.sleep(0.02)

            poller = asyncio.create_task(poll())
            await asyncio.gather(*(register(a) for a in accounts for _ in range(5)))
            finished.set()
            await poller

    asyncio.run(run())
    assert len(done) == 50
    # Every snapshot holds every registration answered before it was taken.
    for taken, age, count in polls:
        committed = max((implied for at, implied in done if at + TRANSIT_MARGIN < taken), default=0)
        assert count >= committed, (taken, age, count, committed)
    # And the snapshot catches up: the last polls (3 s after the burst) show the final count.
    assert polls[-1][2] >= max(implied for _, implied in done)
