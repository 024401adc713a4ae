"""Bearer authentication shared by HTTP handlers and the WebSocket.

A request is authenticated when its access token verifies (``TokenService``)
and its session is still live for an existing user — so logout, refresh-token
reuse and account deletion end access tokens at once, not at expiry.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sanic import Request, Sanic

from nexo.auth import repository
from nexo.auth.tokens import AccessClaims, InvalidToken, TokenService
from nexo.context import app_context


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. ``expires_at`` is the token's ``exp`` (Unix seconds)."""

    user_id: int
    username: str
    expires_at: int
    session_id: str


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or :class:`InvalidToken`."""
    if not header:
        raise InvalidToken("missing Authorization: Bearer <token> header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the Authorization header must be 'Bearer <token>'")
    return token.strip()


async def principal_for_token(
    token: str, tokens: TokenService | None = None, claims: AccessClaims | None = None
) -> Principal:
    """Verify ``token`` (unless its ``claims`` were verified already) and check its session.

    Raises :class:`InvalidToken`.
    """
    if claims is None:
        service: TokenService = tokens or app_context(Sanic.get_app()).tokens
        claims = service.verify_access(token)
    username = await repository.live_session_username(claims.session_id, claims.user_id)
    if username is None:
        raise InvalidToken("the session has ended or the account no longer exists")
    return Principal(claims.user_id, username, claims.exp, claims.session_id)


async def authenticate(request: Request) -> Principal:
    principal: Principal | None = getattr(request.ctx, "principal", None)
    if principal is None:
        token = bearer_token(request.headers.get("authorization"))
        # The rate limiter verified this same header already when it was valid.
        verified: AccessClaims | None = getattr(request.ctx, "access_claims", None)
        principal = await principal_for_token(token, app_context(request).tokens, verified)
        request.ctx.principal = principal
    return principal


H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def authenticated(handler: H) -> H:
    """Decorator: 401 unless the request carries a valid access token; sets ``request.ctx.principal``."""

    @functools.wraps(handler)
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Any:
        await authenticate(request)
        return await handler(request, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
