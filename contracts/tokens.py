"""Bad access tokens for the contract suite, and correctly signed ones when the secret is known.

Without the server's secret the suite can only make tokens that fail for
their shape or signature (garbage, a tampered signature, ``alg: none``, a
refresh token). With it (``NEXO_CONTRACTS_JWT_SECRET``, or the secret of a
server the suite started) it signs tokens exactly as docs/auth.md "Tokens" describes
them (HS256, ``kid`` = 8 bytes of SHA-256 of the secret, base64url), so a
token it minted expired, from another issuer or with an unknown ``kid`` is
refused for that reason and no other: a minted control token with the same
claims must be accepted first. HMAC is computed here with ``hmac`` (nothing
from ``nexo``, no JWT library), so a server bug cannot hide itself.

The secret lives only in memory, inside :class:`Secret`, whose ``repr`` and
``str`` never show it: pytest prints the objects of a failed assertion and
writes them to JUnit XML.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from contracts.wire import b64url_encode, jwt_encode, jwt_parts

#: The environment variable through which an operator gives the suite the server's JWT_SECRET.
SECRET_ENV = "NEXO_CONTRACTS_JWT_SECRET"


class Secret:
    """A secret string that never prints."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__


def key_id(secret: str) -> str:
    """docs/auth.md: ``kid`` is 8 bytes of the secret's SHA-256, base64url without padding."""
    return b64url_encode(hashlib.sha256(secret.encode()).digest()[:8])


@dataclass(frozen=True)
class Minter:
    """Signs HS256 access tokens with the server's secret, copying the claims of a real token."""

    secret: Secret
    issuer: str

    def mint(self, like: str, *, kid: str | None = None, **claims: Any) -> str:
        """A token with ``like``'s claims (user, session), a new ``jti``, then ``claims`` on top.

        ``iat``/``exp`` default to now and now + 1 hour; ``kid`` to the secret's key id.
        """
        header, original, _ = jwt_parts(like)
        now = int(time.time())
        body = {
            **original,
            "iss": self.issuer,
            "iat": now,
            "exp": now + 3600,
            "jti": secrets.token_urlsafe(16),
            **claims,
        }
        head = {"alg": "HS256", "typ": header.get("typ", "JWT"), "kid": kid or key_id(self.secret.reveal())}
        signing_input = jwt_encode(head, body, "").rstrip(".")
        mac = hmac.new(self.secret.reveal().encode(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url_encode(mac)}"

    def expired(self, like: str, seconds_ago: int = 3600) -> str:
        now = int(time.time())
        return self.mint(like, iat=now - seconds_ago - 3600, exp=now - seconds_ago)

    def expiring(self, like: str, seconds: float) -> tuple[str, int]:
        """A token valid now that expires in ``seconds``; returns (token, exp)."""
        exp = int(time.time() + seconds) + 1
        return self.mint(like, exp=exp), exp


def tamper_signature(token: str) -> str:
    head, claims, signature = token.split(".")
    # Change a character in the middle: the last one may only carry padding bits.
    middle = len(signature) // 2
    swapped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{claims}.{signature[:middle]}{swapped}{signature[middle + 1 :]}"


def tamper_claims(token: str) -> str:
    """The claims changed (a later ``exp``, another ``sub``) under the original signature."""
    header, claims, signature = jwt_parts(token)
    return jwt_encode(header, {**claims, "exp": int(claims.get("exp", 0)) + 86400}, signature)


def alg_none(token: str) -> str:
    header, claims, _ = jwt_parts(token)
    return jwt_encode({**header, "alg": "none"}, claims, "")


def read_token_file(text: str) -> str:
    """An access token from ``--expired-token-file``: the bare token, or the login answer's JSON."""
    text = text.strip()
    if text.startswith("{"):
        token = json.loads(text).get("access_token", "")
    else:
        token = text.removeprefix("Bearer ").strip()
    if token.count(".") != 2:
        raise ValueError("it holds no access token (a JWT, or the login answer's JSON)")
    return str(token)
