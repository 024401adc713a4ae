"""Logout ends the session everywhere (docs/auth.md, docs/messaging.md).

After ``POST /api/auth/logout`` answers, the session's access token gets 401
over HTTP, and every WebSocket opened with it is closed with 4401 within
:data:`WITHIN` seconds (plus the logout request's own round trip, which the
close has to travel too); a ``send`` written on that socket after the logout
answered is never stored. (The suite allows :data:`GRACE` more for its own
scheduling on a loaded machine.) Another session of the same user is untouched until
``{"everywhere": true}`` ends it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from contracts.conftest import Accounts, Figure, Target
from contracts.wire import CLOSE_UNAUTHORIZED, bearer, close_of, frame, open_ws, send_frame

#: docs/messaging.md: sockets of an ended session close within 1 s.
WITHIN = 1.0
#: Allowed on top for the suite's own scheduling on a loaded machine (the server's own tests
#: hold it to the second exactly; a black-box check over a network needs a margin).
GRACE = 0.5


async def _live(target: Target, token: str) -> ClientConnection:
    ws = await open_ws(target.ws_url, token, target.ws_timeout)
    await ws.send(json.dumps({"type": "sync", "since": 0}))
    await frame(ws, target.ws_timeout, lambda f: f.get("type") == "synced")
    return ws


async def _logout(target: Target, token: str, everywhere: bool) -> tuple[int, float]:
    """POST /api/auth/logout; returns (status, seconds it took)."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            target.url("/api/auth/logout"), json={"everywhere": everywhere}, headers=bearer(token)
        )
    return response.status_code, time.monotonic() - started


async def _closed_within(
    ws: ClientConnection, since: float, budget: float, timeout: float
) -> tuple[int | None, float]:
    code, _ = await close_of(ws, budget + timeout)
    return code, time.monotonic() - since


def _me(target: Target, token: str) -> int:
    return httpx.get(target.url("/api/me"), headers=bearer(token), timeout=10).status_code


def test_logout_ends_the_session_on_http_and_open_sockets(
    target: Target, accounts: Accounts, figure: Figure
) -> None:
    user, recipient = accounts.create(), accounts.create()
    first_token = user.access_token
    second_token = user.relogin()["access_token"]
    late = send_frame(recipient.username, "contract: sent after logout")

    async def run() -> dict[str, Any]:
        first = await _live(target, first_token)
        second = await _live(target, second_token)
        try:
            started = time.monotonic()
            status, took = await _logout(target, first_token, everywhere=False)
            assert status == 200, f"POST /api/auth/logout -> {status}"
            # Already closed is fine: then nothing can be stored either.
            with contextlib.suppress(ConnectionClosed):
                await first.send(json.dumps(late))
            code, after = await _closed_within(first, started, WITHIN + GRACE + took, target.ws_timeout)
            await second.send(json.dumps({"type": "sync", "since": 0}))
            try:
                other = await frame(second, target.ws_timeout, lambda f: f.get("type") == "synced")
            except AssertionError as exc:
                raise AssertionError(f"logging out one session touched another one's socket: {exc}") from None
            started = time.monotonic()
            status_all, took_all = await _logout(target, second_token, everywhere=True)
            code_all, after_all = await _closed_within(
                second, started, WITHIN + GRACE + took_all, target.ws_timeout
            )
            return {
                "code": code,
                "after": after,
                "took": took,
                "other": other,
                "status_all": status_all,
                "code_all": code_all,
                "after_all": after_all,
                "took_all": took_all,
            }
        finally:
            await first.close()
            await second.close()

    seen = asyncio.run(run())
    figure(
        f"open socket closed {seen['code']} {seen['after']:.2f} s after logout was sent; "
        f"'everywhere': {seen['code_all']} after {seen['after_all']:.2f} s"
    )
    assert seen["code"] == CLOSE_UNAUTHORIZED, f"the logged-out session's socket closed with {seen['code']}"
    assert seen["after"] <= WITHIN + GRACE + seen["took"], (
        f"the logged-out session's socket closed {seen['after']:.2f} s after logout, "
        f"more than {WITHIN:g} s (+ {GRACE:g} s grace + {seen['took']:.2f} s the logout took)"
    )
    assert _me(target, first_token) == 401, "GET /api/me with the logged-out session's token is not 401"
    assert seen["status_all"] == 200, f"POST /api/auth/logout everywhere -> {seen['status_all']}"
    assert seen["code_all"] == CLOSE_UNAUTHORIZED, (
        f"after logout everywhere the socket closed {seen['code_all']}"
    )
    assert seen["after_all"] <= WITHIN + GRACE + seen["took_all"], (
        f"after logout everywhere the socket closed {seen['after_all']:.2f} s later, more than {WITHIN:g} s"
    )
    assert _me(target, second_token) == 401, "after logout everywhere, the other session's token is not 401"
    stored = httpx.get(
        target.url(f"/api/messages/{late['message_id']}"), headers=recipient.headers, timeout=10
    )
    assert stored.status_code == 404, (
        f"a send written on the socket after logout answered was stored (GET -> {stored.status_code})"
    )
    user.relogin()  # a live session again, so the run's cleanup can delete the user
