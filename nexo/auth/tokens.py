"""Access tokens: HS256 JWTs with a ``kid`` naming the secret (docs/auth.md "Tokens").

New tokens are always signed with ``JWT_SECRET``; ``JWT_PREVIOUS_SECRETS`` stay
valid for verification during a rotation. The ``kid`` header selects the key;
a token without ``kid`` is checked against ``JWT_SECRET``. Verification pins
the algorithm list and requires every claim (PyJWT checks a claim only if it
is present). Pure: no database.

A token that verified once is remembered (its claims cannot change: they are
covered by the signature), so a client's many requests with one token pay
for the HMAC and PyJWT's parsing once; expiry is checked on every use, and
session revocation is the guard's job, never cached here.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from nexo.platform.config import Settings
from nexo.platform.errors import ErrorCode, Unauthorized

ALGORITHM = "HS256"
LEEWAY_SECONDS = 30
REQUIRED_CLAIMS = ("exp", "iat", "iss", "sub", "jti", "typ", "sid")
ACCESS = "access"
#: Verified tokens remembered; the oldest is forgotten first.
VERIFIED_CACHE_SIZE = 20_000


class InvalidToken(Unauthorized):
    """401 ``invalid_token``; the message says why, without echoing the token."""

    code = ErrorCode.INVALID_TOKEN

    def __init__(self, message: str) -> None:
        super().__init__(message, bearer_error="invalid_token")


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says. Times are Unix seconds."""

    user_id: int
    username: str
    session_id: str
    jti: str
    iat: int
    exp: int


def key_id(secret: str) -> str:
    """A short, stable, non-secret name for a secret: 8 bytes of its SHA-256, base64url."""
    digest = hashlib.sha256(secret.encode()).digest()[:8]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class TokenService:
    """Issues and verifies access tokens for one deployment's settings."""

    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.jwt_issuer
        self.ttl = settings.access_token_ttl
        self.current_kid = key_id(settings.jwt_secret)
        self._secret = settings.jwt_secret
        self._keys = {key_id(s): s for s in settings.jwt_previous_secrets}
        self._keys[self.current_kid] = settings.jwt_secret
        self._verified: dict[str, AccessClaims] = {}

    def issue_access(self, user_id: int, username: str, session_id: str, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": self.issuer,
            "sub": str(user_id),
            "name": username,
            "sid": session_id,
            "iat": issued,
            "exp": issued + self.ttl,
            "jti": secrets.token_urlsafe(16),
            "typ": ACCESS,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM, headers={"kid": self.current_kid})

    def verify_access(self, token: str, now: float | None = None) -> AccessClaims:
        """Check signature, algorithm, issuer, lifetime, type and claims; raise :class:`InvalidToken`.

        ``now`` (Unix seconds, default the clock) is what expiry is checked against.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = claims
        if (time.time() if now is None else now) >= claims.exp + LEEWAY_SECONDS:
            self._verified.pop(token, None)
            raise InvalidToken("the token has expired")
        return claims

    def _verify(self, token: str) -> AccessClaims:
        """Everything but expiry, which :meth:`verify_access` checks on every use."""
        if not token or token.count(".") != 2 or not token.isascii():
            # A JWT is base64url and dots; anything else (a surrogate, a byte over 0x7f in the
            # header) would fail to encode inside PyJWT instead of failing verification.
            raise InvalidToken("the token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the token is not a JWT") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"tokens must be signed with {ALGORITHM}")
        kid = header.get("kid", self.current_kid)
        secret = self._keys.get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise InvalidToken("the token was signed with an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS), "verify_exp": False},
            )
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token was issued by someone else") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token signature does not verify") from None
        except jwt.PyJWTError:
            raise InvalidToken("the token is malformed") from None
        if claims.get("typ") != ACCESS:
            raise InvalidToken("this is not an access token")
        if not all(type(claims[name]) is int for name in ("exp", "iat")):
            raise InvalidToken("the token's claims are malformed")
        try:
            user_id = int(claims["sub"])
            return AccessClaims(
                user_id=user_id,
                username=str(claims.get("name", "")),
                session_id=str(claims["sid"]),
                jti=str(claims["jti"]),
                iat=int(claims["iat"]),
                exp=int(claims["exp"]),
            )
        except (TypeError, ValueError):
            raise InvalidToken("the token's claims are malformed") from None
