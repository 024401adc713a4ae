"""Access-token verification in process: what is checked once, and what on every use."""

from __future__ import annotations

import time

import jwt
import pytest

from nexo.auth import tokens as tokens_mod
from nexo.auth.tokens import LEEWAY_SECONDS, InvalidToken, TokenService
from nexo.platform.config import Settings

SECRET = "k" * 40


def service() -> TokenService:
    return TokenService(Settings.from_env({"JWT_SECRET": SECRET}))


def test_a_verified_token_is_remembered_and_its_expiry_checked_on_every_use() -> None:
    tokens = service()
    token = tokens.issue_access(7, "alice", "sid-1")
    first = tokens.verify_access(token)
    assert (first.user_id, first.username, first.session_id) == (7, "alice", "sid-1")
    assert tokens.verify_access(token) is first  # no second HMAC and parse
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify_access(token, now=first.exp + LEEWAY_SECONDS)
    with pytest.raises(InvalidToken, match="expired"):  # and it stays refused
        tokens.verify_access(token, now=first.exp + LEEWAY_SECONDS)
    assert tokens.verify_access(token, now=first.exp + LEEWAY_SECONDS - 1) == first


def test_an_expired_token_is_refused_on_first_use() -> None:
    tokens = service()
    token = tokens.issue_access(7, "alice", "sid-1", now=time.time() - 7200)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify_access(token)


def test_a_tampered_copy_of_a_remembered_token_is_still_refused() -> None:
    tokens = service()
    token = tokens.issue_access(7, "alice", "sid-1")
    tokens.verify_access(token)
    head, payload, signature = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"sub":"7"', b'"sub":"8"')
    ).decode()
    with pytest.raises(InvalidToken, match="signature"):
        tokens.verify_access(f"{head}.{forged_payload}.{signature}")


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_times_must_be_integers_even_when_signed_by_us(claim: str) -> None:
    tokens = service()
    now = int(time.time())
    claims = {
        "iss": "nexo", "sub": "7", "name": "a", "sid": "s", "iat": now, "exp": now + 60,
        "jti": "j", "typ": "access",
    }  # fmt: skip
    claims[claim] = str(claims[claim])
    token = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": tokens.current_kid})
    with pytest.raises(InvalidToken):
        tokens.verify_access(token)


def test_the_memory_of_verified_tokens_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_mod, "VERIFIED_CACHE_SIZE", 3)
    tokens = service()
    issued = [tokens.issue_access(i, f"u{i}", f"s{i}") for i in range(5)]
    remembered = [tokens.verify_access(token) for token in issued]
    assert len(tokens._verified) == 3
    # The oldest were forgotten, yet still verify (again) when used.
    assert tokens.verify_access(issued[0]) == remembered[0]
    assert tokens.verify_access(issued[0]) is not remembered[0]
