"""The browser and the Python SDK's CLI (``nexo-client``) speak one envelope, both ways."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect

from contracts.server import LocalServer
from tests.browser.test_chat import (
    PASSWORD,
    WAIT_MS,
    contexts,  # noqa: F401 - fixture
    expect_verified,
    new_name,
    nexo,  # noqa: F401 - fixture
    open_chat,
    received,
    sign_up,
    type_message,
)

pytestmark = pytest.mark.server


def cli(state: Path, server: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexo_client", "--server", server, "--state-dir", str(state), *args],
        input=stdin, capture_output=True, text=True, timeout=90, check=False,
    )


def test_browser_and_nexo_client_exchange_messages_both_ways(
    nexo: LocalServer, contexts: list[BrowserContext], tmp_path: Path  # noqa: F811
) -> None:
    alice, carol = new_name("alice"), new_name("carol")
    page = sign_up(contexts[0], nexo.base_url, alice)
    state = tmp_path / "carol"
    done = cli(state, nexo.base_url, "register", carol, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr

    open_chat(page, carol)
    expect_verified(page)
    type_message(page, "from the browser: héllo ✓")
    expect(page.locator('#messages li[data-state="sent"]')).to_have_count(1, timeout=WAIT_MS)
    heard = cli(state, nexo.base_url, "--json", "listen", "--count", "1", "--timeout", "60")
    assert heard.returncode == 0, heard.stderr
    lines = [json.loads(line) for line in heard.stdout.splitlines() if line.strip()]
    got = [(m["sender"], m["text"], m["verified"]) for m in lines]
    assert got == [(alice, "from the browser: héllo ✓", True)]

    sent = cli(state, nexo.base_url, "send", alice, "from the terminal")
    assert sent.returncode == 0, sent.stderr
    expect(received(page, "from the terminal")).to_have_count(1, timeout=WAIT_MS)
    expect(received(page, "from the terminal")).to_contain_text("✓ verified")
