"""The operator console in real Chromium: rows turn red when a runbook promise breaks, green again."""

from __future__ import annotations

import base64
import secrets
import sqlite3

import httpx
from playwright.sync_api import Page, expect

from contracts.client import Account
from tests.browser.conftest import screenshot
from tests.conftest import ServerFactory
from tests.test_contracts_fail import fault_proxy

TOKEN = secrets.token_urlsafe(36)
WAIT_MS = 30_000  # rows follow within a refresh or two; CI machines are slow


def open_console(page: Page, base_url: str) -> None:
    page.goto(base_url + "/console")
    page.get_by_label("Console token").fill("wrong-" + TOKEN)
    page.get_by_label("Console token").press("Enter")
    expect(page.get_by_role("alert").filter(has_text="refused")).to_be_visible(timeout=WAIT_MS)
    page.get_by_label("Console token").fill(TOKEN)
    page.get_by_role("button", name="Open console").click()
    expect(page.locator("#checklist tbody tr")).to_have_count(6, timeout=WAIT_MS)


def row(page: Page, key: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#checklist tr[data-key="{key}"]')


def add_device(base_url: str) -> str:
    """A new user registers one device (the log signs a new tree head); their username."""
    account = Account.create(base_url, "console")
    response = httpx.post(
        f"{base_url}/api/devices",
        headers={"Authorization": f"Bearer {account.access_token}"},
        json={"name": "laptop", "public_key": base64.b64encode(secrets.token_bytes(32)).decode(),
              "key_type": "ed25519"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return account.username


def test_rate_limit_and_stale_sth_turn_rows_red_then_green(page: Page, make_server: ServerFactory) -> None:
    server = make_server({
        "NEXO_CONSOLE_TOKEN": TOKEN, "NEXO_CONSOLE_WINDOW": "4", "NEXO_STH_MAX_AGE": "1",
        "NEXO_RATE_LIMIT": "10/minute",
    })
    base = server.base_url
    open_console(page, base)
    expect(row(page, "ratelimit")).to_have_attribute("data-ok", "true", timeout=WAIT_MS)

    statuses = [httpx.get(base + "/api/sth/latest", timeout=10).status_code for _ in range(14)]
    assert 429 in statuses
    expect(row(page, "ratelimit")).to_have_attribute("data-ok", "false", timeout=WAIT_MS)
    expect(row(page, "ratelimit")).to_contain_text("Runbook")
    expect(row(page, "ratelimit")).to_have_attribute("data-ok", "true", timeout=WAIT_MS)  # window passed

    # The log signs a heartbeat STH every second (NEXO_STH_MAX_AGE=1). Hold SQLite's write lock
    # from outside: no STH can commit, the latest grows older than 1 s + health's 10 s grace.
    expect(row(page, "sth")).to_have_attribute("data-ok", "true", timeout=WAIT_MS)
    blocker = sqlite3.connect(server.data_dir / "nexo.db", isolation_level=None, timeout=30)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        frozen = blocker.execute('SELECT MAX("index") FROM sths').fetchone()[0]
        expect(row(page, "sth")).to_have_attribute("data-ok", "false", timeout=WAIT_MS)
        expect(row(page, "sth")).to_contain_text("Check STH chain")
        expect(row(page, "sth")).to_contain_text(f"STH #{frozen},")
    finally:
        blocker.rollback()
        blocker.close()
    expect(row(page, "sth")).to_have_attribute("data-ok", "true", timeout=WAIT_MS)  # the heartbeat resumes
    add_device(base)
    expect(page.locator("#registrations tbody tr")).to_have_count(1, timeout=WAIT_MS)
    screenshot(page, "console")
    assert not [e for e in page.errors if "Content Security Policy" in e]  # type: ignore[attr-defined]


def test_slow_health_through_the_proxy_turns_red_then_green(page: Page, make_server: ServerFactory,
                                                             tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = make_server({"NEXO_CONSOLE_TOKEN": TOKEN})
    with fault_proxy(server.base_url, "none", tmp_path / "proxy.log") as url:
        open_console(page, url)
        expect(row(page, "health")).to_have_attribute("data-ok", "true", timeout=WAIT_MS)
        httpx.put(url + "/__proxy/fault/health_slow", timeout=10).raise_for_status()
        expect(row(page, "health")).to_have_attribute("data-ok", "false", timeout=WAIT_MS)
        expect(row(page, "health")).to_contain_text("Health Response Time > 200ms")
        screenshot(page, "console-red")
        httpx.put(url + "/__proxy/fault/none", timeout=10).raise_for_status()
        expect(row(page, "health")).to_have_attribute("data-ok", "true", timeout=WAIT_MS)
