"""Runbook "JWT Token Expired": tokens expire after 1 hour, refresh works, a dead refresh token is refused."""

from __future__ import annotations

import httpx

from contracts.conftest import Accounts, Figure, Target
from contracts.wire import bearer, jwt_parts

ONE_HOUR = 3600


def _refresh(target: Target, token: str) -> httpx.Response:
    return httpx.post(target.url("/api/auth/refresh"), json={"refresh_token": token}, timeout=10)


def test_access_tokens_live_one_hour_and_name_the_issuer(
    target: Target, accounts: Accounts, figure: Figure
) -> None:
    account = accounts.create()
    header, claims, _ = jwt_parts(account.access_token)
    figure(f"exp - iat = {claims.get('exp', 0) - claims.get('iat', 0)} s, iss = {claims.get('iss')!r}")
    assert header.get("alg") not in (None, "none"), f"access token is unsigned: {header}"
    assert isinstance(claims.get("iat"), int) and isinstance(claims.get("exp"), int), claims
    assert claims["exp"] - claims["iat"] == ONE_HOUR, (
        f"exp - iat = {claims['exp'] - claims['iat']} s, not 3600"
    )
    assert claims.get("iss") == target.issuer, f"iss = {claims.get('iss')!r}, expected {target.issuer!r}"
    me = httpx.get(target.url("/api/me"), headers=account.headers, timeout=10)
    assert me.status_code == 200, f"GET /api/me with a fresh token -> {me.status_code}"


def test_refresh_gives_a_working_pair_and_reuse_is_refused(target: Target, accounts: Accounts) -> None:
    account = accounts.create()
    first = _refresh(target, account.refresh_token)
    assert first.status_code == 200, f"refresh -> {first.status_code} {first.text[:200]}"
    pair = first.json()
    assert pair["refresh_token"] != account.refresh_token, "refresh must rotate the refresh token"
    _, claims, _ = jwt_parts(pair["access_token"])
    assert claims["exp"] - claims["iat"] == ONE_HOUR, "a refreshed access token must also live one hour"
    me = httpx.get(target.url("/api/me"), headers=bearer(pair["access_token"]), timeout=10)
    assert me.status_code == 200, f"GET /api/me with the refreshed token -> {me.status_code}"

    reuse = _refresh(target, account.refresh_token)
    assert reuse.status_code == 401, f"reusing a spent refresh token -> {reuse.status_code}, expected 401"
    assert "error" in reuse.json(), "errors are JSON {'error': {...}}"
    # docs/auth.md "Tokens": reuse of a dead refresh token revokes its whole family.
    family = _refresh(target, pair["refresh_token"])
    assert family.status_code == 401, (
        f"after reuse, the newer refresh token of the same family -> {family.status_code}, expected 401"
    )
