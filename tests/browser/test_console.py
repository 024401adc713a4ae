"""The operator console in real Chromium: rows turn red when a runbook promise breaks, green again.

Run on SQLite and (``NEXO_TEST_BACKEND=postgres``, tox env ``browser``) on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.sync_api import Page, expect

from contracts.server import LocalServer
from tests.browser.conftest import screenshot
from tests.conftest import ServerFactory
from tests.support import aics
from tests.support.aics import AicsWitness
from tests.support.console import TOKEN, add_device
from tests.support.log_writer import log_vkey
from tests.support.proxy import fault_proxy

pytestmark = pytest.mark.server

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


@contextlib.contextmanager
def sth_writes_blocked(server: LocalServer) -> Iterator[int]:
    """Hold a lock that lets no STH commit (SQLite's write lock, or PostgreSQL's EXCLUSIVE lock
    on ``sths``, which still lets readers in); yields the latest STH index, frozen."""
    url = server.env.get("DATABASE_URL")
    if not url:
        blocker = sqlite3.connect(server.data_dir / "nexo.db", isolation_level=None, timeout=30)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            yield blocker.execute('SELECT MAX("index") FROM sths').fetchone()[0]
        finally:
            blocker.rollback()
            blocker.close()
        return
    locked, release = threading.Event(), threading.Event()
    frozen: list[int] = []

    async def hold() -> None:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE sths IN EXCLUSIVE MODE")
                frozen.append(await conn.fetchval('SELECT MAX("index") FROM sths'))
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)  # Playwright's loop runs here
    holder.start()
    try:
        assert locked.wait(30), "could not lock the sths table"
        yield frozen[0]
    finally:
        release.set()
        holder.join(30)


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

    # The log signs a heartbeat STH every second (NEXO_STH_MAX_AGE=1). Block writes to the STH
    # table from outside: no STH can commit, the latest grows older than 1 s + health's 10 s grace.
    expect(row(page, "sth")).to_have_attribute("data-ok", "true", timeout=WAIT_MS)
    with sth_writes_blocked(server) as frozen:
        expect(row(page, "sth")).to_have_attribute("data-ok", "false", timeout=WAIT_MS)
        expect(row(page, "sth")).to_contain_text("Check STH chain")
        expect(row(page, "sth")).to_contain_text(f"STH #{frozen},")
    expect(row(page, "sth")).to_have_attribute("data-ok", "true", timeout=WAIT_MS)  # the heartbeat resumes
    add_device(base)
    expect(page.locator("#registrations tbody tr")).to_have_count(1, timeout=WAIT_MS)
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


def test_witness_cosignatures_in_the_sth_row(page: Page, make_server: ServerFactory, tmp_path: Path) -> None:
    """The STH row shows how many witnesses cosigned the STH the checkpoint serves against the
    quorum: red while the witness is down or refuses the log, green once it cosigns."""
    aics.venv_bin()
    witness = AicsWitness(tmp_path / "witness", "witness.test/w1")
    try:
        server = make_server({
            "NEXO_CONSOLE_TOKEN": TOKEN, "NEXO_WITNESSES": f"{witness.url} {witness.vkey}",
            "NEXO_WITNESS_QUORUM": "1", "NEXO_WITNESS_INTERVAL": "0.3",
        })
        key = httpx.get(f"{server.base_url}/api/log/key", timeout=10).json()
        origin, vkey = key["origin"], log_vkey(key["origin"], base64.b64decode(key["public_key"]))
        open_console(page, server.base_url)
        sth = row(page, "sth")
        # Not started yet: the submitter cannot reach it.
        expect(sth).to_have_attribute("data-ok", "false", timeout=WAIT_MS)
        expect(sth).to_contain_text("failing: witness.test/w1: error:")
        expect(sth).to_contain_text("nexo doctor lists each witness's last error")

        witness.trust(origin, vkey)
        witness.start()
        expect(sth).to_have_attribute("data-ok", "true", timeout=WAIT_MS)
        expect(sth).to_contain_text("by 1 of 1 witnesses (quorum 1: witness.test/w1)")
        checkpoint = httpx.get(f"{server.base_url}/api/log/checkpoint", timeout=10)
        served = int(checkpoint.headers["nexo-checkpoint-index"])
        expect(sth).to_contain_text(f"cosigned: STH #{served} ")
        status = httpx.get(f"{server.base_url}/api/console/status", timeout=10,
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert status["sth"]["cosigned"]["cosigners"] == ["witness.test/w1"]
        assert (status["sth"]["cosigned"]["quorum"], status["sth"]["cosigned"]["witnesses"]) == (1, 1)
        add_device(server.base_url)
        expect(page.locator("#registrations tbody tr")).to_have_count(1, timeout=WAIT_MS)
        screenshot(page, "console")

        witness.stop()  # down
        add_device(server.base_url)  # a new STH the witness must be sent
        expect(sth).to_have_attribute("data-ok", "false", timeout=WAIT_MS)
        expect(sth).to_contain_text("failing: witness.test/w1: error:")

        # Up again, but it no longer trusts the log's key: it refuses (403).
        witness.trust(origin, log_vkey(origin, secrets.token_bytes(32)))
        witness.start()
        expect(sth).to_contain_text("failing: witness.test/w1: forbidden", timeout=WAIT_MS)
        expect(sth).to_have_attribute("data-ok", "false")

        witness.stop()
        witness.trust(origin, vkey)
        witness.start()
        expect(sth).to_have_attribute("data-ok", "true", timeout=WAIT_MS)
        expect(sth).not_to_contain_text("failing")
        assert not [e for e in page.errors if "Content Security Policy" in e]  # type: ignore[attr-defined]
    finally:
        witness.stop()
