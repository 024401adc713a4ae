"""WebSocket ``/ws`` wire protocol (docs/messaging.md "Frames", "Error codes"): frames, codes, parsing.

Pure: no I/O. :func:`parse_frame` turns one text frame into a typed frame or
raises :class:`FrameError` carrying a stable :class:`WsError` code, so the
reader loop answers a bad frame with an ``error`` frame and keeps the
connection open.
"""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple

from nexo.messages.service import (
    MESSAGE_ID_FORMAT,
    BodyTooLarge,
    Delivery,
    InvalidBody,
    StoredMessage,
    canonical_message_id,
    check_body_size,
    check_body_text,
    message_json,
)
from nexo.platform.text import echoable, has_lone_surrogate, may_hold_escapes
from nexo.platform.validation import INT64_MAX


class ClientFrame(StrEnum):
    """``type`` of frames a client sends."""

    SEND = "send"
    DELIVERED = "delivered"
    SYNC = "sync"
    AUTH = "auth"


class ServerFrame(StrEnum):
    """``type`` of frames the server sends."""

    ACK = "ack"
    MESSAGE = "message"
    SYNCED = "synced"
    ERROR = "error"


class CloseCode(IntEnum):
    """WebSocket close codes Nexo uses (RFC 6455 §7.4 and docs/messaging.md "Error codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    #: A slow consumer: it left a write pending for ``NEXO_WS_WRITE_TIMEOUT`` or its outbox is full.
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    UNAUTHORIZED = 4401
    #: The user already has ``NEXO_WS_MAX_CONNECTIONS_PER_USER`` connections on this worker.
    TOO_MANY_CONNECTIONS = 4429


class WsError(StrEnum):
    """Stable ``code`` values of ``error`` frames. Clients branch on these: never rename one."""

    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    INVALID_MESSAGE_ID = "invalid_message_id"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    BODY_TOO_LARGE = "body_too_large"
    MESSAGE_ID_CONFLICT = "message_id_conflict"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    SERVICE_UNAVAILABLE = "service_unavailable"
    INVALID_BODY = "invalid_body"


class FrameError(Exception):
    """A client frame Nexo cannot act on; answered with an ``error`` frame."""

    def __init__(self, code: WsError, message: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id


class Send(NamedTuple):
    message_id: str
    to: str
    body: str


class Delivered(NamedTuple):
    message_id: str


class Sync(NamedTuple):
    since: int


class Auth(NamedTuple):
    token: str


Frame = Send | Delivered | Sync | Auth

_SEND_FIELDS = frozenset({"type", "message_id", "to", "body"})


def normalize_message_id(value: object) -> str:
    """The canonical lowercase hyphenated form of a UUID, or :class:`FrameError`."""
    canonical = canonical_message_id(value)
    if canonical is None:
        raise FrameError(WsError.INVALID_MESSAGE_ID, MESSAGE_ID_FORMAT)
    return canonical


def _string(data: dict[str, Any], name: str, message_id: str | None = None) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise FrameError(WsError.INVALID_FIELD, f"{name}: {what}", message_id)
    return value


def parse_frame(text: str | bytes, max_body_bytes: int) -> Frame:
    """Parse one client frame; raise :class:`FrameError` with a stable code if it is bad.

    ``message_id`` comes back in canonical UUID form; ``body`` longer than
    ``max_body_bytes`` UTF-8 bytes is refused with ``body_too_large``, one with
    U+0000 with ``invalid_body``. A lone surrogate escape anywhere is
    ``invalid_json`` (RFC 7493 §2.1): nothing parsed here fails to encode later.
    """
    if not isinstance(text, str):
        raise FrameError(WsError.BINARY_NOT_SUPPORTED, "frames are JSON text, not binary")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
        raise FrameError(WsError.INVALID_JSON, "the frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError(WsError.INVALID_FRAME, "a frame must be a JSON object")
    kind = data.get("type")
    raw_id = data.get("message_id")
    escaped = may_hold_escapes(text)
    if escaped and has_lone_surrogate(data):
        message = "the frame holds a lone surrogate escape: strings must be valid Unicode"
        raise FrameError(WsError.INVALID_JSON, message, echoable(raw_id))
    if kind == ClientFrame.SEND:
        message_id = _message_id(raw_id)
        to = _string(data, "to", message_id)
        body = _string(data, "body", message_id)
        if not 1 <= len(to) <= 64:
            raise FrameError(WsError.UNKNOWN_RECIPIENT, "no such recipient", message_id)
        try:
            check_body_size(body, max_body_bytes)
        except BodyTooLarge as exc:
            raise FrameError(WsError.BODY_TOO_LARGE, exc.message, message_id) from None
        if len(data) > len(_SEND_FIELDS) or not _SEND_FIELDS.issuperset(data):
            extra = ", ".join(sorted(set(data) - _SEND_FIELDS))
            raise FrameError(WsError.INVALID_FIELD, f"unknown field(s): {extra}", message_id)
        if escaped:  # U+0000 and lone surrogates reach a JSON string only as escapes
            try:
                check_body_text(body)
            except InvalidBody as exc:
                raise FrameError(WsError.INVALID_BODY, exc.message, message_id) from None
        return Send(message_id, to, body)
    if kind == ClientFrame.DELIVERED:
        return Delivered(_message_id(raw_id))
    if kind == ClientFrame.SYNC:
        since = data.get("since", 0)
        if isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= INT64_MAX:
            raise FrameError(WsError.INVALID_FIELD, "since: must be a whole number from 0 to 2^63-1")
        return Sync(since)
    if kind == ClientFrame.AUTH:
        return Auth(_string(data, "token"))
    if kind is None:
        raise FrameError(WsError.INVALID_FIELD, "type: missing", echoable(raw_id))
    shown = kind if isinstance(kind, str) and len(kind) <= 32 else type(kind).__name__
    raise FrameError(WsError.UNKNOWN_TYPE, f"unknown frame type {shown!r}", echoable(raw_id))


def _message_id(raw: object) -> str:
    if raw is None:
        raise FrameError(WsError.INVALID_FIELD, "message_id: missing")
    try:
        return normalize_message_id(raw)
    except FrameError as exc:
        exc.message_id = echoable(raw)  # only short printable ASCII is echoed back
        raise


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked server text frame (RFC 6455 5.2) without extensions."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def dumps(frame: dict[str, Any]) -> str:
    """Compact JSON for an outgoing frame."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def message_frame(message: StoredMessage | Delivery) -> str:
    """A ``message`` frame: a push, or one row of a ``sync`` replay (the message's wire
    form, the one HTTP's history also returns, after ``type``)."""
    return dumps({"type": ServerFrame.MESSAGE.value, **message_json(message)})


#: An ``ack`` frame; ``message_id`` is a validated UUID, so no escaping is needed.
_ACK = '{"type":"ack","message_id":"%s","seq":%d,"server_ts":%d,"duplicate":%s}'


def ack_frame(message_id: str, seq: int, server_ts: int, duplicate: bool) -> str:
    """An ``ack`` frame: the send with ``message_id`` (a canonical UUID) is stored."""
    return _ACK % (message_id, seq, server_ts, "true" if duplicate else "false")


def synced_frame(upto: int) -> str:
    """The ``synced`` frame ending a ``sync`` replay."""
    return dumps({"type": ServerFrame.SYNCED.value, "upto": upto})


def error_frame(code: WsError | str, message: str, message_id: str | None = None) -> str:
    frame: dict[str, Any] = {"type": ServerFrame.ERROR.value, "code": str(code), "message": message}
    if message_id is not None:
        frame["message_id"] = message_id
    return dumps(frame)


def rate_limited_frame(rate: object, message_id: str, retry_after: float) -> str:
    """The ``rate_limited`` error frame of a refused ``send``, with its ``retry_after``."""
    return dumps(
        {
            "type": ServerFrame.ERROR.value,
            "code": WsError.RATE_LIMITED.value,
            "message": f"send rate limit of {rate} exceeded; retry after retry_after seconds",
            "message_id": message_id,
            "retry_after": round(retry_after, 3),
        }
    )
