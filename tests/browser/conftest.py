"""Real Chromium for the browser tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Playwright's own browser download is not reachable on Nexo's machines, so the
tests use the distribution's Chromium (``apt-get install chromium``; scripts/test
installs it when missing). Each test module gets one browser; each test its own
contexts (separate cookies, storage and IndexedDB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

CHROMIUM = os.environ.get("NEXO_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: Where tests save their screenshots (docs/img refreshes the ones in the docs), if set.
SCREENSHOTS = os.environ.get("NEXO_WEB_SCREENSHOTS")


def screenshot(page: Page, name: str) -> None:
    """Save ``<name>.png`` when NEXO_WEB_SCREENSHOTS names a directory (docs/web.md)."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def missing_chromium() -> str | None:
    """Why the browser cannot run, or ``None``: the tests fail (never skip) with this message."""
    if not os.access(CHROMIUM, os.X_OK):
        return (f"Chromium is missing: {CHROMIUM} is not an executable. Install Debian's "
                "(apt-get install -y chromium; scripts/test does it as root) or set NEXO_TEST_CHROMIUM "
                "to a Chromium binary. Playwright's own download (playwright install) is not used.")
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if (reason := missing_chromium()) is not None:
        pytest.fail(reason, pytrace=False)
    with sync_playwright() as playwright:
        # launch() gives every browser a fresh temporary user-data-dir.
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        except PlaywrightError as exc:
            pytest.fail(f"{CHROMIUM} did not start: {exc.message}", pytrace=False)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()
