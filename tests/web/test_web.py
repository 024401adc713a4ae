"""The web side over HTTP, on both backends: pages, their policy and caching, the console's data.

The pages in a real browser: tests/browser.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.support.console import TOKEN, add_device

pytestmark = pytest.mark.server


def test_console_is_off_without_its_token(make_server: ServerFactory) -> None:
    server = make_server()
    for path in ("/console", "/api/console/status"):
        response = httpx.get(server.base_url + path, timeout=10)
        assert response.status_code == 404
        assert "NEXO_CONSOLE_TOKEN" in response.json()["error"]["message"]


def test_console_data_requires_the_token(make_server: ServerFactory) -> None:
    server = make_server({"NEXO_CONSOLE_TOKEN": TOKEN})
    assert httpx.get(server.base_url + "/api/console/status", timeout=10).status_code == 401
    response = httpx.get(server.base_url + "/api/console/status",
                         headers={"Authorization": f"Bearer {TOKEN}x"}, timeout=10)
    assert response.status_code == 401
    response = httpx.get(server.base_url + "/api/console/status",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200
    doc = response.json()
    keys = [r["key"] for r in doc["rows"]]
    assert keys == ["health", "duplicates", "websockets", "sth", "tokens", "ratelimit"]
    assert doc["sth"]["index"] == 0 and doc["registrations"] == []
    assert doc["sth"]["cosigned"] == {"index": -1, "timestamp_ms": 0, "cosigners": [], "quorum": 0,
                                      "witnesses": 0}  # no witnesses configured
    username = add_device(server.base_url)
    deadline = time.monotonic() + 30
    while not doc["registrations"]:  # the sampler reads every 2 s
        assert time.monotonic() < deadline, doc
        time.sleep(0.5)
        doc = httpx.get(server.base_url + "/api/console/status", headers={"Authorization": f"Bearer {TOKEN}"},
                        params={"since": doc["sampled_at"]}, timeout=10).json()
    assert [(r["username"], r["key_type"], r["leaf_index"]) for r in doc["registrations"]] == [
        (username, "ed25519", 0)]
    assert doc["sth"]["index"] == 1
    assert all(point[0] > 0 for point in doc["plot"]["sth_index"])


def test_pages_have_a_strict_policy_and_revalidate(make_server: ServerFactory) -> None:
    server = make_server()
    page = httpx.get(server.base_url + "/", timeout=10)
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "unsafe" not in policy
    assert page.headers["cache-control"] == "no-cache"
    again = httpx.get(server.base_url + "/", headers={"If-None-Match": page.headers["etag"]}, timeout=10)
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(server.base_url + "/static/style.css", timeout=10).headers["content-type"].startswith(
        "text/css")
    for bad in ("/static/../config.py", "/static/nope.js", "/static/%2e%2e/app.py"):
        assert httpx.get(server.base_url + bad, timeout=10).status_code == 404
    # The API keeps its own, stricter policy.
    assert httpx.get(server.base_url + "/api/health", timeout=10).headers[
        "content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
