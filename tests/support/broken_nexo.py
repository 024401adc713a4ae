"""Nexo with one promise broken on purpose, for ``tests/contracts/test_contracts_fail.py``.

``NEXO_TEST_BREAK=<name> python -m tests.support.broken_nexo serve ...`` patches the
named behaviour out of Nexo, then runs the ordinary ``nexo`` command. The
patch is applied when this module is imported, before the app is built (one
worker: ``nexo serve`` then serves in this process). Test harness only: the
point is a server broken in a way the fault proxy cannot fake (a guard that
accepts what it should refuse), so the contract suite can be shown to notice.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _ignore_expiry() -> None:
    """Access tokens never expire, on HTTP and /ws, and open sockets stay open past ``exp``."""
    from nexo.auth import tokens
    from nexo.realtime import ws

    def verify_access(self: Any, token: str, now: float | None = None) -> Any:
        return self._verify(token)

    tokens.TokenService.verify_access = verify_access  # type: ignore[method-assign]
    ws._arm_expiry = lambda conn, expires_at: None  # type: ignore[attr-defined]


def _http_skips_signature() -> None:
    """The HTTP guard reads a token's claims without checking its signature (/ws still checks)."""
    import jwt

    from nexo.auth import guard
    from nexo.auth.tokens import AccessClaims, InvalidToken

    async def authenticate(request: Any) -> Any:
        token = guard.bearer_token(request.headers.get("authorization"))
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
            verified = AccessClaims(
                int(claims["sub"]), str(claims.get("name", "")), str(claims["sid"]), "", 0, int(claims["exp"])
            )
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            raise InvalidToken("the token is malformed") from None
        request.ctx.principal = await guard.principal_for_token(token, claims=verified)
        return request.ctx.principal

    guard.authenticate = authenticate  # type: ignore[assignment]


def _sockets_outlive_logout() -> None:
    """Open WebSockets are not closed when their session ends (new requests still are refused)."""
    from nexo.realtime import hub, sessions

    async def check(self: Any) -> int:
        return 0

    sessions.SessionWatch.check = check  # type: ignore[method-assign]
    hub.Hub.end_sessions = lambda self, user_id, session_id, reason: 0  # type: ignore[method-assign]


def _budget_by_raw_path() -> None:
    """The limiter picks the budget from the raw path: ``/api/auth/login/`` escapes the auth budget."""
    from nexo.platform import ratelimit

    ratelimit.budget_path = lambda request: request.path


PATCHES = {
    "ignore_expiry": _ignore_expiry,
    "http_skips_signature": _http_skips_signature,
    "sockets_outlive_logout": _sockets_outlive_logout,
    "budget_by_raw_path": _budget_by_raw_path,
}

for _name in filter(None, os.environ.get("NEXO_TEST_BREAK", "").split(",")):
    PATCHES[_name]()

if __name__ == "__main__":
    from nexo.cli import main

    sys.exit(main())
