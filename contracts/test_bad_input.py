"""Bad input never answers 5xx (docs/api.md "Errors": JSON with a fitting status; docs/security.md).

Numbers that do not fit 64 bits, a username far over its length, a token
whose bytes are not text: each is the client's mistake, so each gets a 4xx
with the JSON error (401 for a token), never 500; on ``/ws`` a malformed token
closes with 4401 and an overflowing ``sync`` cursor gets an ``error`` frame,
never a 1011 close.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from contracts.conftest import Accounts, Target
from contracts.wire import CLOSE_UNAUTHORIZED, close_of, frame, open_ws

HUGE = "99999999999999999999"  # > 2**64
#: (method, path, whether it needs the user's token, JSON body)
HTTP_CASES: dict[str, tuple[str, str, bool, Any]] = {
    "messages-since-overflow": ("GET", f"/api/messages?since={HUGE}", True, None),
    "messages-limit-overflow": ("GET", f"/api/messages?limit={HUGE}", True, None),
    "sth-index-overflow": ("GET", "/api/sth/9999999999999999999", False, None),
    "sth-start-overflow": ("GET", f"/api/sth?start={HUGE}", False, None),
    "entries-overflow": ("GET", f"/api/log/entries?start={HUGE}&end={HUGE}", False, None),
    "inclusion-overflow": (
        "GET",
        f"/api/log/proof/inclusion?leaf_index={HUGE}&tree_size={HUGE}",
        False,
        None,
    ),
    "consistency-overflow": ("GET", f"/api/log/proof/consistency?first={HUGE}&second={HUGE}", False, None),
    "login-huge-username": ("POST", "/api/auth/login", False, {"username": "u" * 5000, "password": "x" * 12}),
}
#: ``Authorization`` values whose token is not even text.
BAD_HEADERS = {"non-utf8-token": b"Bearer a.b.\xff", "non-utf8-jwt-part": b"Bearer \xff\xfe.e30.sig"}


@pytest.fixture(scope="module")
def account(accounts: Accounts) -> Any:
    return accounts.create()


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_bad_parameters_get_a_4xx_json_error(target: Target, account: Any, case: str) -> None:
    method, path, authed, body = HTTP_CASES[case]
    headers = account.headers if authed else {}
    response = httpx.request(method, target.url(path), headers=headers, json=body, timeout=10)
    assert 400 <= response.status_code < 500, (
        f"{method} {path[:80]} -> {response.status_code}, expected a 4xx"
    )
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    assert isinstance(error, dict) and error.get("code"), (
        f"{case}: the {response.status_code} is not a JSON error"
    )


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_a_token_that_is_not_text_gets_401(target: Target, case: str) -> None:
    response = httpx.get(target.url("/api/me"), headers={"authorization": BAD_HEADERS[case]}, timeout=10)
    assert response.status_code == 401, f"{case}: GET /api/me -> {response.status_code}, expected 401"


def test_a_token_that_is_not_text_is_closed_with_4401_on_the_upgrade(target: Target) -> None:
    async def run() -> tuple[int | None, str]:
        # The header as raw bytes: latin-1 keeps 0xff a single byte on the wire.
        ws = await open_ws(target.ws_url, "a.b.\xff", target.ws_timeout)
        return await close_of(ws, target.ws_timeout)

    code, reason = asyncio.run(run())
    assert code == CLOSE_UNAUTHORIZED, f"/ws with 'Bearer a.b.\\xff': closed {code} {reason!r}, expected 4401"


def test_an_auth_frame_token_with_a_surrogate_is_closed_with_4401(target: Target) -> None:
    async def run() -> tuple[int | None, str]:
        ws = await open_ws(target.ws_url, None, target.ws_timeout)
        await ws.send('{"type":"auth","token":"eyJhbGciOiJIUzI1NiJ9.\\ud800.c2ln"}')
        return await close_of(ws, target.ws_timeout)

    code, reason = asyncio.run(run())
    assert code == CLOSE_UNAUTHORIZED, f"auth frame with a surrogate: closed {code} {reason!r}, expected 4401"


def test_a_sync_cursor_over_64_bits_gets_an_error_frame(target: Target, account: Any) -> None:
    async def run() -> dict[str, Any]:
        ws = await open_ws(target.ws_url, account.access_token, target.ws_timeout)
        try:
            await ws.send(f'{{"type":"sync","since":{HUGE}}}')
            answer = await frame(ws, target.ws_timeout, lambda f: f.get("type") in {"error", "synced"})
            # The connection stays usable.
            await ws.send(json.dumps({"type": "sync", "since": 0}))
            await frame(ws, target.ws_timeout, lambda f: f.get("type") == "synced")
            return answer
        finally:
            await ws.close()

    try:
        answer = asyncio.run(run())
    except AssertionError as exc:
        raise AssertionError(f"sync with since={HUGE}: {exc}") from None
    assert answer.get("type") == "error", f"sync with since={HUGE} answered {answer}, expected an error frame"
