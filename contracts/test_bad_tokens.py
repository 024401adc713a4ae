"""Runbook "WebSocket 4401 Unauthorized", on every surface: a bad token gets 401 over HTTP and 4401 on /ws.

docs/auth.md: an authenticated HTTP endpoint (``GET /api/me``) answers 401 with
``WWW-Authenticate: Bearer`` and ``{"error": {"code", "message"}}``; ``/ws``
accepts the upgrade, then closes with 4401 and a reason, whether the token
came in the header or in a first ``auth`` frame. The same kinds of bad token
on each: missing, garbage, malformed, a real token with a tampered signature
or tampered claims, ``alg: none``, a refresh token used as an access token,
a token of a logged-out session, a token of a deleted user, and — when the
suite holds the server's secret (a local run, or ``NEXO_CONTRACTS_JWT_SECRET``)
— correctly signed tokens from another issuer or with an unknown ``kid``,
after a correctly signed control token is accepted. Expired tokens are the
expiry promise's (``test_expiry.py``). A valid token, the control, works.
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
from contracts.tokens import SECRET_ENV, alg_none, tamper_claims, tamper_signature
from contracts.wire import CLOSE_UNAUTHORIZED, bearer, close_of, frame, open_ws

#: The server waits this long for a first-frame ``auth`` before closing (docs/messaging.md: 5 s).
AUTH_FRAME_WINDOW = 5.0
SURFACES = ["http", "ws-header", "ws-first-frame"]


class Tokens:
    """The bad tokens of one run, made from real accounts."""

    def __init__(self, target: Target, accounts: Accounts) -> None:
        self.target = target
        self.account = accounts.create()
        with httpx.Client(timeout=10) as client:
            ended = accounts.create()
            response = client.post(target.url("/api/auth/logout"), headers=ended.headers, json={})
            assert response.status_code == 200, f"POST /api/auth/logout -> {response.status_code}"
            self.logged_out = ended.access_token
            gone = accounts.create()
            response = client.delete(target.url("/api/me"), headers=gone.headers)
            assert response.status_code in (200, 204), f"DELETE /api/me -> {response.status_code}"
            accounts.forget(gone)
            self.deleted = gone.access_token

    def minted(self, **changes: Any) -> str:
        minter = self.target.minter
        if minter is None:
            pytest.skip(f"needs the server's secret in {SECRET_ENV} to sign a token")
        control = minter.mint(self.account.access_token)
        response = httpx.get(self.target.url("/api/me"), headers=bearer(control), timeout=10)
        assert response.status_code == 200, (
            f"a fresh token signed with the given secret -> GET /api/me {response.status_code}: "
            "the secret is not this server's, so the signed bad tokens prove nothing"
        )
        return minter.mint(self.account.access_token, **changes)


KINDS: dict[str, Callable[[Tokens], str | None]] = {
    "missing": lambda t: None,
    "garbage": lambda t: "garbage-not-a-jwt",
    "malformed": lambda t: "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
    "tampered-signature": lambda t: tamper_signature(t.account.access_token),
    "tampered-claims": lambda t: tamper_claims(t.account.access_token),
    "alg-none": lambda t: alg_none(t.account.access_token),
    "refresh-token-as-access": lambda t: t.account.refresh_token,
    "logged-out-session": lambda t: t.logged_out,
    "deleted-user": lambda t: t.deleted,
    "wrong-issuer": lambda t: t.minted(iss=f"not-{t.target.issuer}"),
    "unknown-kid": lambda t: t.minted(kid="contract-unknown-key"),
}


@pytest.fixture(scope="module")
def tokens(target: Target, accounts: Accounts) -> Tokens:
    return Tokens(target, accounts)


async def _close_code(target: Target, token: str | None, *, first_frame: bool) -> tuple[int | None, str]:
    if first_frame:
        ws = await open_ws(target.ws_url, None, target.ws_timeout)
        await ws.send(json.dumps({"type": "auth", "token": token}))
    else:
        ws = await open_ws(target.ws_url, token, target.ws_timeout)
    return await close_of(ws, target.ws_timeout)


def _assert_http_401(response: httpx.Response, kind: str) -> None:
    assert response.status_code == 401, f"{kind}: GET /api/me -> {response.status_code}, expected 401"
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    assert isinstance(error, dict) and isinstance(error.get("code"), str), (
        f"{kind}: the 401 is not a JSON error {{'error': {{'code', 'message'}}}}: {response.text[:200]}"
    )
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer"), (
        f"{kind}: the 401 lacks WWW-Authenticate: Bearer"
    )


#: (kind, surface); a missing token on /ws is its own test (it waits for the first-frame window).
CASES = [(k, s) for k in KINDS for s in SURFACES if k != "missing" or s == "http"]


@pytest.mark.parametrize(("kind", "surface"), CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_bad_token_is_refused(target: Target, tokens: Tokens, kind: str, surface: str) -> None:
    token = KINDS[kind](tokens)
    if surface == "http":
        headers = bearer(token) if token is not None else {}
        _assert_http_401(httpx.get(target.url("/api/me"), headers=headers, timeout=10), kind)
        return
    code, reason = asyncio.run(_close_code(target, token, first_frame=surface == "ws-first-frame"))
    assert code == CLOSE_UNAUTHORIZED, f"{kind} ({surface}): closed with {code} {reason!r}, expected 4401"
    assert reason, f"{kind} ({surface}): 4401 without a reason"


def test_missing_token_waits_for_the_first_frame_then_4401(target: Target, figure: Figure) -> None:
    async def run() -> tuple[int | None, str, float]:
        ws = await open_ws(target.ws_url, None, target.ws_timeout)
        started = time.monotonic()
        code, reason = await close_of(ws, AUTH_FRAME_WINDOW + target.ws_timeout)
        return code, reason, time.monotonic() - started

    code, reason, waited = asyncio.run(run())
    figure(f"no token: closed {code} after {waited:.1f} s")
    assert code == CLOSE_UNAUTHORIZED, f"missing token: closed with {code} {reason!r}, expected 4401"


def test_valid_token_works_on_both_surfaces(target: Target, tokens: Tokens) -> None:
    me = httpx.get(target.url("/api/me"), headers=tokens.account.headers, timeout=10)
    assert me.status_code == 200, f"GET /api/me with a valid token -> {me.status_code}"

    async def run() -> dict[str, Any]:
        ws = await open_ws(target.ws_url, tokens.account.access_token, target.ws_timeout)
        try:
            await ws.send(json.dumps({"type": "sync", "since": 0}))
            return await frame(ws, target.ws_timeout, lambda f: f.get("type") == "synced")
        finally:
            await ws.close()

    synced = asyncio.run(run())
    assert isinstance(synced.get("upto"), int), f"synced frame without an integer upto: {synced}"
