"""Runbook "JWT Token Expired": a token past its ``exp`` is refused everywhere, for its age.

Proved with tokens that are correctly signed and really expired, never with
an altered copy (that is refused for its signature and proves nothing):

- a local run: a second server with ``NEXO_ACCESS_TOKEN_TTL`` of a few
  seconds (``conftest.EXPIRY_TTL``); a user logged in there when the run
  started, whose token is used once it is past ``exp`` plus the allowed clock
  skew (docs/auth.md: 30 s), and a fresh login whose socket must close at expiry;
- against a URL: tokens minted with the server's secret from
  ``NEXO_CONTRACTS_JWT_SECRET`` (after a minted control token is accepted), or
  the token of ``--expired-token-file``; with neither, the promise is skipped
  and says why expiry was not proved.

Checked: ``GET /api/me`` answers 401 with the JSON error; a new ``/ws`` is
closed with 4401 (header and first-frame auth); a socket open when its token
expires is closed with 4401.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from contracts.conftest import Accounts, Figure, Target
from contracts.tokens import SECRET_ENV
from contracts.wire import CLOSE_UNAUTHORIZED, bearer, close_of, frame, jwt_parts, open_ws

NOT_PROVED = (
    "expiry not proved: against a URL the suite needs the server's JWT_SECRET in "
    f"{SECRET_ENV} (never printed or stored) or --expired-token-file with an access token "
    "captured more than an hour earlier"
)


@dataclass(frozen=True)
class Expired:
    """A correctly signed token whose ``exp`` is behind us, and the server it belongs to."""

    label: str
    base_url: str
    token: str

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.base_url.startswith("https") else "ws"
        return scheme + self.base_url[self.base_url.index(":") :] + "/ws"

    def age(self) -> int:
        return int(time.time()) - int(jwt_parts(self.token)[1]["exp"])


def _wait_past(exp: int, target: Target) -> None:
    """Sleep until ``exp`` plus the allowed clock skew (and a second) is behind us."""
    left = exp + target.clock_skew + 1 - time.time()
    if left > 0:
        time.sleep(left)


def _control(target: Target, token: str, what: str) -> None:
    response = httpx.get(target.url("/api/me"), headers=bearer(token), timeout=10)
    assert response.status_code == 200, (
        f"{what} -> GET /api/me {response.status_code}: the server does not accept tokens signed "
        f"with the secret in {SECRET_ENV}, so expiry cannot be proved with it"
    )


@pytest.fixture(scope="module")
def expired(target: Target, accounts: Accounts) -> list[Expired]:
    means = target.expiry
    found: list[Expired] = []
    if target.local and means is not None and means.early is not None:
        token = means.early.access_token
        _, claims, _ = jwt_parts(token)
        assert claims["exp"] - claims["iat"] == means.ttl, (
            f"with NEXO_ACCESS_TOKEN_TTL={means.ttl} the token lives {claims['exp'] - claims['iat']} s"
        )
        _wait_past(int(claims["exp"]), target)
        found.append(Expired(f"a token of a {means.ttl}-second lifetime", str(means.base_url), token))
        return found
    if target.minter is not None:
        like = accounts.create().access_token
        _control(target, target.minter.mint(like), "a fresh token signed with the given secret")
        found.append(
            Expired("a token signed with the server's secret", target.base_url, target.minter.expired(like))
        )
    if means is not None and means.file_problem:
        pytest.fail(means.file_problem)
    if means is not None and means.file_token:
        candidate = Expired(f"the token of {means.token_file}", target.base_url, means.file_token)
        if candidate.age() <= target.clock_skew:
            pytest.fail(
                f"the token of {means.token_file} is not expired by more than the "
                f"{target.clock_skew:g} s of allowed clock skew (exp is {-candidate.age()} s away)"
            )
        found.append(candidate)
    if not found:
        pytest.skip(NOT_PROVED)
    return found


def test_an_expired_token_gets_401_over_http(expired: list[Expired], figure: Figure) -> None:
    for token in expired:
        response = httpx.get(token.base_url + "/api/me", headers=bearer(token.token), timeout=10)
        figure(f"{token.label}, expired {token.age()} s ago: GET /api/me -> {response.status_code}")
        assert response.status_code == 401, (
            f"{token.label}, expired {token.age()} s ago: GET /api/me -> {response.status_code}, expected 401"
        )
        error = response.json().get("error") if "json" in response.headers.get("content-type", "") else None
        assert isinstance(error, dict) and error.get("code"), (
            f"401 for an expired token is not a JSON error: {response.text[:200]}"
        )


@pytest.mark.parametrize("where", ["header", "first-frame"])
def test_an_expired_token_is_closed_with_4401_on_a_new_websocket(
    target: Target, expired: list[Expired], where: str
) -> None:
    async def close_code(token: Expired) -> tuple[int | None, str]:
        if where == "header":
            ws = await open_ws(token.ws_url, token.token, target.ws_timeout)
        else:
            ws = await open_ws(token.ws_url, None, target.ws_timeout)
            await ws.send(json.dumps({"type": "auth", "token": token.token}))
        return await close_of(ws, target.ws_timeout)

    for token in expired:
        what = f"{token.label}, expired {token.age()} s ago, on a new /ws ({where})"
        try:
            code, reason = asyncio.run(close_code(token))
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}, expected a close with 4401") from None
        assert code == CLOSE_UNAUTHORIZED, f"{what}: closed with {code} {reason!r}, expected 4401"


def test_an_open_connection_is_closed_with_4401_when_its_token_expires(
    target: Target, accounts: Accounts, figure: Figure
) -> None:
    means = target.expiry
    if target.local and means is not None and means.base_url is not None:
        from contracts.client import Account

        token = Account.create(means.base_url).access_token
        ws_url = str(means.ws_url)
    elif target.minter is not None:
        token, _ = target.minter.expiring(accounts.create().access_token, 3)
        ws_url = target.ws_url
    else:
        pytest.skip(f"needs a token that expires during the run: the secret in {SECRET_ENV}")
    exp = int(jwt_parts(token)[1]["exp"])

    async def run() -> tuple[dict[str, Any], int | None, str]:
        ws = await open_ws(ws_url, token, target.ws_timeout)
        await ws.send(json.dumps({"type": "sync", "since": 0}))
        synced = await frame(ws, target.ws_timeout, lambda f: f.get("type") == "synced")
        wait = exp + target.clock_skew + target.ws_timeout - time.time()
        code, reason = await close_of(ws, max(wait, 1.0))
        return synced, code, reason

    try:
        _, code, reason = asyncio.run(run())
    except AssertionError as exc:
        raise AssertionError(f"a socket whose token expired: {exc}") from None
    late = time.time() - exp
    figure(f"open socket closed {code} {late:.1f} s after its token's exp")
    assert code == CLOSE_UNAUTHORIZED, (
        f"the socket open when its token expired was closed with {code} {reason!r}, expected 4401"
    )
