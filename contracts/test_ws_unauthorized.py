"""Runbook "WebSocket 4401 Unauthorized": every kind of bad token gets close code 4401.

DESIGN.md: the upgrade is accepted, then closed with 4401 and a reason. The
bad tokens are made without the server's secret: missing, garbage, a real
token with a tampered signature, ``alg: none``, an expired-looking token, a
refresh token used as an access token, and a real token of a deleted user.
A valid token, the control, is not closed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from contracts.conftest import Accounts, Figure, Target
from contracts.wire import CLOSE_UNAUTHORIZED, close_of, frame, jwt_encode, jwt_parts, open_ws

#: The server waits this long for a first-frame ``auth`` before closing (DESIGN.md: 5 s).
AUTH_FRAME_WINDOW = 5.0


def _tamper_signature(token: str) -> str:
    head, claims, signature = token.split(".")
    # Change a character in the middle: the last one may only carry padding bits.
    middle = len(signature) // 2
    swapped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{claims}.{signature[:middle]}{swapped}{signature[middle + 1 :]}"


def _alg_none(token: str) -> str:
    header, claims, _ = jwt_parts(token)
    return jwt_encode({**header, "alg": "none"}, claims, "")


def _expired(token: str) -> str:
    header, claims, signature = jwt_parts(token)
    now = int(time.time())
    return jwt_encode(header, {**claims, "iat": now - 7200, "exp": now - 3600}, signature)


BadToken = Callable[[Any], str]

KINDS: dict[str, BadToken] = {
    "garbage": lambda account: "garbage-not-a-jwt",
    "tampered-signature": lambda account: _tamper_signature(account.access_token),
    "alg-none": lambda account: _alg_none(account.access_token),
    "expired-looking": lambda account: _expired(account.access_token),
    "refresh-token-as-access": lambda account: account.refresh_token,
}


@pytest.fixture(scope="module")
def account(accounts: Accounts) -> Any:
    return accounts.create()


async def _close_code(target: Target, token: str | None, *, first_frame: bool) -> tuple[int | None, str]:
    if first_frame:
        ws = await open_ws(target.ws_url, None, target.ws_timeout)
        await ws.send(json.dumps({"type": "auth", "token": token}))
    else:
        ws = await open_ws(target.ws_url, token, target.ws_timeout)
    return await close_of(ws, target.ws_timeout)


def _assert_4401(code: int | None, reason: str, kind: str) -> None:
    assert code == CLOSE_UNAUTHORIZED, f"{kind}: closed with {code} {reason!r}, expected 4401"
    assert reason, f"{kind}: 4401 without a reason"


@pytest.mark.parametrize("where", ["header", "first-frame"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_token_is_closed_with_4401(target: Target, account: Any, kind: str, where: str) -> None:
    token = KINDS[kind](account)
    code, reason = asyncio.run(_close_code(target, token, first_frame=where == "first-frame"))
    _assert_4401(code, reason, f"{kind} ({where})")


def test_missing_token_is_closed_with_4401(target: Target, figure: Figure) -> None:
    async def run() -> tuple[int | None, str, float]:
        ws = await open_ws(target.ws_url, None, target.ws_timeout)
        started = time.monotonic()
        code, reason = await close_of(ws, AUTH_FRAME_WINDOW + target.ws_timeout)
        return code, reason, time.monotonic() - started

    code, reason, waited = asyncio.run(run())
    figure(f"no token: closed {code} after {waited:.1f} s")
    _assert_4401(code, reason, "missing token")


def test_token_of_a_deleted_user_is_closed_with_4401(target: Target, accounts: Accounts) -> None:
    gone = accounts.create()
    response = httpx.delete(target.url("/api/me"), headers=gone.headers, timeout=10)
    assert response.status_code in (200, 204), f"DELETE /api/me -> {response.status_code}"
    accounts.forget(gone)
    code, reason = asyncio.run(_close_code(target, gone.access_token, first_frame=False))
    _assert_4401(code, reason, "deleted user's token")


def test_valid_token_is_not_closed(target: Target, account: Any) -> None:
    async def run() -> dict[str, Any]:
        ws = await open_ws(target.ws_url, account.access_token, target.ws_timeout)
        try:
            await ws.send(json.dumps({"type": "sync", "since": 0}))
            return await frame(ws, target.ws_timeout, lambda f: f.get("type") == "synced")
        finally:
            await ws.close()

    synced = asyncio.run(run())
    assert isinstance(synced.get("upto"), int), f"synced frame without an integer upto: {synced}"
