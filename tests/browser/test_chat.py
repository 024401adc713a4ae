"""The chat web client in real Chromium: registration with proofs, E2E messages, warnings, offline."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Browser, BrowserContext, Page, expect

from contracts.server import LocalServer
from nexo_client import Witness
from tests.browser.conftest import screenshot
from tests.conftest import ServerFactory, db_scalar, server_factory
from tests.support.fault_proxy import WITNESS_NAME
from tests.support.proxy import fault_proxy
from tests.support.realtime import FAST_ENV

pytestmark = pytest.mark.server

WAIT_MS = 30_000
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def nexo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with server_factory(tmp_path_factory.mktemp("chat")) as make:
        yield make(FAST_ENV)


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    """Separate browser profiles (cookies, storage, IndexedDB): one per user."""
    opened = [browser.new_context(viewport={"width": 1100, "height": 900}) for _ in range(2)]
    yield opened
    for context in opened:
        context.close()


def new_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


def sign_up(context: BrowserContext, base_url: str, username: str, *, keyboard: bool = False,
            login: bool = False) -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(base_url + "/")
    button = "Log in" if login else "Create account"
    if keyboard:  # labelled fields in tab order, the buttons reachable by Tab
        page.get_by_label("Username", exact=True).focus()
        page.keyboard.type(username)
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Tab")
        if not login:
            page.keyboard.press("Tab")
        expect(page.get_by_role("button", name=button)).to_be_focused()
        page.keyboard.press("Enter")
    else:
        page.get_by_label("Username", exact=True).fill(username)
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name=button).click()
    keys = page.locator("#my-keys li")
    expect(keys).to_have_count(2, timeout=WAIT_MS)
    expect(keys.first).to_contain_text("inclusion proof checked against STH #")
    expect(page.locator("#connection")).to_have_text("connected", timeout=WAIT_MS)
    return page


def open_chat(page: Page, peer: str) -> None:
    page.get_by_label("Talk to (username)").fill(peer)
    page.get_by_label("Talk to (username)").press("Enter")


def expect_verified(page: Page, keys: int = 2) -> None:
    items = page.locator('#peer-keys li[data-state="verified"]')
    expect(items).to_have_count(keys, timeout=WAIT_MS)
    expect(items.first).to_contain_text("verified against STH #")


def alice_sees_bob(contexts: list[BrowserContext], base_url: str) -> tuple[Page, Page, str, str]:
    """alice and bob sign up in their own browsers; alice opens bob's chat and sees his keys verified."""
    alice, bob = new_name("alice"), new_name("bob")
    a = sign_up(contexts[0], base_url, alice)
    b = sign_up(contexts[1], base_url, bob)
    open_chat(a, bob)
    expect_verified(a)
    return a, b, alice, bob


def type_message(page: Page, text: str) -> None:
    box = page.get_by_label("Message (Enter sends, Shift+Enter for a new line)")
    box.fill(text)
    box.press("Enter")


def received(page: Page, text: str):  # type: ignore[no-untyped-def]
    return page.locator('#messages li[data-state="received"]', has_text=text)


def stored_rows(server: LocalServer) -> int:
    return int(db_scalar(server, "SELECT COUNT(*) FROM messages"))


def test_two_browsers_register_verify_each_other_and_talk(
    nexo: LocalServer, contexts: list[BrowserContext]
) -> None:
    alice, bob = new_name("alice"), new_name("bob")
    a = sign_up(contexts[0], nexo.base_url, alice)
    b = sign_up(contexts[1], nexo.base_url, bob, keyboard=True)
    b.set_viewport_size({"width": 390, "height": 844})  # a phone
    open_chat(a, bob)
    expect_verified(a)
    type_message(a, "hello bob, only you can read this")
    expect(a.locator('#messages li[data-state="sent"]')).to_have_count(1, timeout=WAIT_MS)
    expect(received(b, "hello bob, only you can read this")).to_have_count(1, timeout=WAIT_MS)
    open_chat(b, alice)
    expect_verified(b)
    type_message(b, "hi alice ✓ ünïcödé")
    expect(received(a, "hi alice ✓ ünïcödé")).to_have_count(1, timeout=WAIT_MS)
    assert b.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    screenshot(a, "chat")
    screenshot(b, "chat-phone")
    assert stored_rows(nexo) >= 2  # only ciphertext: no stored body holds the words typed
    plain = "SELECT COUNT(*) FROM messages WHERE body LIKE ? OR body LIKE ?"
    assert db_scalar(nexo, plain, ("%hello bob%", "%alice ✓%")) == 0
    assert not a.errors and not b.errors  # type: ignore[attr-defined]


def test_errors_are_shown_where_they_happen(nexo: LocalServer, contexts: list[BrowserContext]) -> None:
    page = contexts[0].new_page()
    page.goto(nexo.base_url + "/")
    page.get_by_label("Username", exact=True).fill(new_name("nobody"))
    page.get_by_label("Password", exact=True).fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert").filter(has_text="Could not log in")).to_be_visible(timeout=WAIT_MS)
    alice = sign_up(contexts[1], nexo.base_url, new_name("alice"))
    open_chat(alice, new_name("ghost"))
    expect(alice.locator("#warnings")).to_contain_text("no user", timeout=WAIT_MS)
    type_message(alice, "to nobody")
    expect(alice.locator("#warnings")).to_contain_text("Not sent", timeout=WAIT_MS)


def test_a_new_key_of_the_peer_is_a_warning_until_accepted(
    nexo: LocalServer, contexts: list[BrowserContext], browser: Browser
) -> None:
    a, b, _, bob = alice_sees_bob(contexts, nexo.base_url)
    before = stored_rows(nexo)
    other = browser.new_context()  # bob logs in on a second browser: a new device, new keys
    try:
        sign_up(other, nexo.base_url, bob, login=True)
    finally:
        other.close()
    type_message(a, "who holds the new key?")
    warning = a.locator("#warnings .warning").filter(has_text="Key change")
    expect(warning).to_be_visible(timeout=WAIT_MS)
    a.wait_for_timeout(1000)
    assert stored_rows(nexo) == before
    warning.get_by_role("button", name="I checked: trust the new keys").click()
    expect_verified(a, keys=4)
    expect(received(b, "who holds the new key?")).to_have_count(1, timeout=WAIT_MS)


def test_offline_typing_is_sent_once_after_reconnect(
    nexo: LocalServer, contexts: list[BrowserContext]
) -> None:
    a, b, _, _ = alice_sees_bob(contexts, nexo.base_url)
    before = stored_rows(nexo)
    contexts[0].set_offline(True)
    expect(a.locator("#connection")).to_contain_text("offline", timeout=WAIT_MS)
    type_message(a, "typed while offline")
    expect(a.locator('#messages li[data-state="queued"]', has_text="typed while offline")).to_have_count(1)
    b.wait_for_timeout(1500)
    assert stored_rows(nexo) == before
    contexts[0].set_offline(False)
    expect(received(b, "typed while offline")).to_have_count(1, timeout=WAIT_MS)
    sent = a.locator('#messages li[data-state="sent"]', has_text="typed while offline")
    expect(sent).to_have_count(1, timeout=WAIT_MS)
    b.wait_for_timeout(1500)
    expect(received(b, "typed while offline")).to_have_count(1)
    assert stored_rows(nexo) == before + 1


@pytest.mark.parametrize("fault", ["client_swap_key", "client_fork_sth"])
def test_a_tampering_server_makes_the_page_warn_and_send_nothing(
    make_server: ServerFactory, contexts: list[BrowserContext], tmp_path: Path, fault: str
) -> None:
    server = make_server(FAST_ENV)
    key_file = Path(server.env.get("NEXO_SIGNING_KEY_FILE") or server.data_dir / "sth_signing.key")
    with fault_proxy(server.base_url, "none", tmp_path / "proxy.log", "--signing-key", str(key_file)) as url:
        a, b, _, _ = alice_sees_bob(contexts, url)
        # The log grows (so a forked head is a new one) and then the proxy starts lying.
        sign_up(contexts[1], url, new_name("carol"))
        httpx.put(f"{url}/__proxy/fault/{fault}", timeout=10).raise_for_status()
        type_message(a, "must never leave this browser")
        warning = a.locator("#warnings .warning")
        expect(warning.first).to_be_visible(timeout=WAIT_MS)
        expect(warning.first).to_contain_text("differs from the key in the log" if fault == "client_swap_key"
                                              else "not consistent")
        a.wait_for_timeout(1500)
        assert stored_rows(server) == 0
        expect(received(b, "must never leave")).to_have_count(0)
        expect(a.locator('#messages li[data-state="sent"]')).to_have_count(0)


def test_witness_cosignatures_are_shown_and_a_forged_one_stops_sending(
    make_server: ServerFactory, contexts: list[BrowserContext], tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "witness.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    vkey = Witness(WITNESS_NAME, public).vkey()
    server = make_server(FAST_ENV)
    extra = ("--witness-key", str(key_file))
    with fault_proxy(server.base_url, "client_cosign", tmp_path / "proxy.log", *extra) as url:
        a, b, _, _ = alice_sees_bob(contexts, url)
        expect(a.locator("#peer-keys li").first).to_contain_text("none required")
        a.get_by_label("Witness keys to require (C2SP vkeys, one per line)").fill(vkey)
        a.get_by_role("button", name="Save witnesses").click()
        expect(a.locator("#witness-state")).to_contain_text("1 witness(es) required", timeout=WAIT_MS)
        cosigned = a.locator("#peer-keys li").first
        expect(cosigned).to_contain_text(f"cosigned by {WITNESS_NAME}", timeout=WAIT_MS)
        type_message(a, "cosigned and sent")
        expect(received(b, "cosigned and sent")).to_have_count(1, timeout=WAIT_MS)
        before = stored_rows(server)

        httpx.put(f"{url}/__proxy/fault/client_bad_cosignature", timeout=10).raise_for_status()
        type_message(a, "must not go out")
        warning = a.locator("#warnings .warning").first
        forged = f"cosignature by witness {WITNESS_NAME} does not verify"
        expect(warning).to_contain_text(forged, timeout=WAIT_MS)
        a.wait_for_timeout(1000)
        assert stored_rows(server) == before
        expect(received(b, "must not go out")).to_have_count(0)
