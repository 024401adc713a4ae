"""Before and during the ``/ws`` handshake: admitting an upgrade, authenticating the socket.

Sanic runs the endpoint after the handshake, so an authentication failure is
"accept, then close 4401" (:func:`close_unauthorized`). A client authenticates
with an ``Authorization`` header or, within ``Settings.ws_auth_timeout`` (5 s), an
``auth`` frame; sockets waiting for that frame are capped per address.
"""

from __future__ import annotations

from prometheus_client import Counter as MetricCounter
from sanic import Request

from nexo.auth.service import Principal, bearer_token, principal_for_token
from nexo.context import app_context
from nexo.messages import service
from nexo.platform.config import Settings
from nexo.platform.errors import NexoError, TooManyRequests
from nexo.platform.ratelimit import client_address
from nexo.realtime.connection import CLOSES, UNAUTHORIZED_CLOSES
from nexo.realtime.inbox import Inbox
from nexo.realtime.protocol import Auth, CloseCode, FrameError, parse_frame
from nexo.realtime.transport import WebSocketTransport

PENDING_REFUSED = MetricCounter(
    "nexo_ws_upgrades_refused_total", "WebSocket upgrades refused: too many unauthenticated from one address"
)


class Unauthenticated(Exception):
    """Close the connection with 4401 and this reason."""


def opaque_header_bytes(request: Request) -> None:
    """Let the handshake see every header, so a malformed ``Authorization`` is a 4401, not a 500.

    Sanic reads header bytes as UTF-8 (surrogate-escaping the rest); the websockets
    handshake refuses such values. Re-read as ISO-8859-1, RFC 9110 §5.5's opaque
    ``obs-text``, they pass the handshake and then fail token verification.
    """
    headers = request.headers
    for name in {key for key, value in headers.items() if not value.isascii()}:
        values = headers.getall(name)
        del headers[name]
        for value in values:
            headers.add(name, value.encode("utf-8", "surrogateescape").decode("latin-1"))


async def admit_upgrade(request: Request) -> None:
    """Before the handshake: refuse (429) an upgrade that will wait for an auth frame from an
    address that already holds ``NEXO_WS_MAX_PENDING_PER_ADDRESS`` such sockets, and note
    the push cursor: every message committed after it (after the client sees the
    connection open) reaches this connection, by push or by catch-up.

    The cursor is the newest seq, read from the database only for a genuine access token
    (signature and expiry checked, no I/O); anything else costs no query and starts from
    the newest seq this process knows (exact with one process)."""
    ctx = app_context(request)
    settings = ctx.settings
    if (
        "authorization" not in request.headers
        and ctx.ws_pending[client_address(request)] >= settings.ws_max_pending_per_address
    ):
        PENDING_REFUSED.inc()
        raise TooManyRequests(
            f"more than {settings.ws_max_pending_per_address} WebSocket upgrades from this address "
            "are waiting to authenticate",
            retry_after=settings.ws_auth_timeout,
        )
    request.ctx.push_from = ctx.hub.seq_hint
    header = request.headers.get("authorization")
    if header is not None:
        try:
            ctx.tokens.verify_access(bearer_token(header))
        except Exception:  # closed with 4401 after the handshake
            return
        request.ctx.push_from = await service.max_seq()


async def authenticate(request: Request, inbox: Inbox) -> Principal:
    """The socket's principal, from its ``Authorization`` header or its first frame (an
    ``auth`` frame within ``Settings.ws_auth_timeout``); :class:`Unauthenticated` otherwise."""
    header = request.headers.get("authorization")
    settings: Settings = app_context(request).settings
    if header is not None:
        token = _token_or_reason(header)
    else:
        first = await inbox.get(timeout=settings.ws_auth_timeout)
        if first is None:
            raise Unauthenticated(
                f"authenticate within {settings.ws_auth_timeout:g} s: Authorization header or auth frame"
            )
        try:
            frame = parse_frame(first, settings.message_body_max_bytes)
        except FrameError:
            frame = None
        if not isinstance(frame, Auth):
            raise Unauthenticated('the first frame must be {"type": "auth", "token": ...}')
        token = frame.token
    return await verified_principal(token)


def _token_or_reason(header: str) -> str:
    try:
        return bearer_token(header)
    except NexoError as exc:
        raise Unauthenticated(exc.message) from None


async def verified_principal(token: str) -> Principal:
    """The principal of a live access token, or :class:`Unauthenticated` with the reason."""
    try:
        return await principal_for_token(token)
    except NexoError as exc:
        raise Unauthenticated(exc.message) from None


async def close_unauthorized(transport: WebSocketTransport, reason: str) -> None:
    """Close a socket that is not authenticated with 4401 and ``reason``."""
    UNAUTHORIZED_CLOSES.inc()
    CLOSES.labels(str(int(CloseCode.UNAUTHORIZED))).inc()
    await transport.close(CloseCode.UNAUTHORIZED, reason.encode()[:120].decode(errors="ignore"))
