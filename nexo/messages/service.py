"""Messages: one send path for HTTP and WebSocket, the outcomes of a send, history, delivery marks.

:class:`MessageSender` checks a send once (recipient, ``message_id``, body) and hands it
to the per-process group-commit writer, :class:`nexo.messages.writer.MessageWriter`
(how sends are stored, failure isolation and exactly-once: its docstring). The errors a
send can end in, :class:`SendResult` (the ack) and :class:`Delivery` (what is pushed) are
defined here, as the one place other features read them from.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from nexo.auth.service import USERNAME_RE
from nexo.messages import repository
from nexo.messages.repository import NewMessage, StoredMessage
from nexo.platform.errors import ErrorCode, NexoError, NotFound, Unauthorized
from nexo.platform.text import body_problem

if TYPE_CHECKING:
    from nexo.messages.writer import MessageWriter

log = logging.getLogger("nexo.messages")

#: How long a username → user id answer is reused (seconds).
RECIPIENT_CACHE_SECONDS = 30.0


class MessageIdConflict(NexoError):
    """The ``message_id`` is taken by a different message; nothing about it is revealed."""

    status = 409
    code = ErrorCode.MESSAGE_ID_CONFLICT

    def __init__(self) -> None:
        super().__init__("this message_id is already used by a different message; use a new UUID")


class UnknownRecipient(NexoError):
    status = 422
    code = "unknown_recipient"

    def __init__(self) -> None:
        super().__init__("no such recipient")


class BodyTooLarge(NexoError):
    status = 413
    code = "body_too_large"


class InvalidBody(NexoError):
    """The body is not storable text (U+0000); refused before it is queued, on every backend."""

    status = 422
    code = "invalid_body"


class SessionEnded(Unauthorized):
    """The sender's session ended (logout, revocation, deletion) before the message was
    committed: it is not stored. Seen when another worker ended the session."""

    def __init__(self) -> None:
        super().__init__("the session has ended; nothing was stored", code="session_ended")


class StorageUnavailable(NexoError):
    """The batch could not be committed; nothing was acked, the client should retry."""

    status = 503
    code = ErrorCode.SERVICE_UNAVAILABLE


class SendResult(NamedTuple):
    """What an ``ack`` (or the POST response) says."""

    message_id: str
    seq: int
    server_ts: int
    duplicate: bool


class Delivery(NamedTuple):
    """A newly stored message, as pushed to its recipient."""

    seq: int
    message_id: str
    sender_id: int
    recipient_id: int
    sender: str
    recipient: str
    body: str
    server_ts: int


Outcome = SendResult | NexoError
Callback = Callable[[Outcome], None]
#: Done when a batch's push signal is published; its acks wait for it.
Gate = asyncio.Future[Any]
#: Called after each commit with the new rows and the recipients of resent (duplicate) ones.
CommitListener = Callable[[list[Delivery], set[int]], Gate | None]


_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: Why a ``message_id`` is refused, in the same words over HTTP and WebSocket.
MESSAGE_ID_FORMAT = "message_id must be a UUID (8-4-4-4-12 hex)"


def canonical_message_id(value: object) -> str | None:
    """The canonical lowercase hyphenated form of a UUID, or None when ``value`` is not one."""
    if not isinstance(value, str) or _UUID_RE.fullmatch(value) is None:
        return None
    return value.lower()


def now_ms() -> int:
    return int(time.time() * 1000)


class RecipientCache:
    """username → user id, reused for :data:`RECIPIENT_CACHE_SECONDS` (unknown names are not cached)."""

    def __init__(self, ttl: float = RECIPIENT_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._ids: dict[str, tuple[int, float]] = {}

    async def user_id(self, username: str) -> int | None:
        name = username.lower()
        if not USERNAME_RE.fullmatch(name):
            return None  # no account has it, and it may hold what a query cannot carry (U+0000)
        hit = self._ids.get(name)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        user_id = await repository.find_user_id(name)
        if user_id is None:
            self._ids.pop(name, None)
            return None
        if len(self._ids) > 100_000:
            self._ids.clear()
        self._ids[name] = (user_id, now + self.ttl)
        return user_id

    def forget(self, user_id: int) -> None:
        """Drop every name cached for ``user_id`` (its account was deleted, here or elsewhere)."""
        for name in [name for name, (cached_id, _) in self._ids.items() if cached_id == user_id]:
            del self._ids[name]

    def cached(self, username: str) -> int | None:
        """The cached id without I/O, or ``None`` if a lookup is needed."""
        hit = self._ids.get(username.lower())
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None


def check_body_size(body: str, limit: int) -> None:
    """Refuse a body of more than ``limit`` UTF-8 bytes (413 ``body_too_large``)."""
    if len(body) * 4 > limit and len(body.encode(errors="surrogatepass")) > limit:
        raise BodyTooLarge(f"body is over the limit of {limit} bytes")


def check_body_text(body: str) -> None:
    """Refuse a body that is not storable text (422 ``invalid_body``)."""
    problem = body_problem(body)
    if problem is not None:
        raise InvalidBody(problem)


def check_body(body: str, limit: int) -> None:
    """Refuse a body before it is queued: too large (413) or not storable text (422 ``invalid_body``)."""
    check_body_size(body, limit)
    check_body_text(body)


class Sender(NamedTuple):
    """Who sends: the account, and the session the message is stored only while it lives."""

    user_id: int
    username: str
    session_id: str | None


class MessageSender:
    """The one way a message is sent, over HTTP (:meth:`send`) and WebSocket (:meth:`submit`).

    The body is checked by :func:`check_body` (HTTP: in :meth:`send`; WebSocket: in
    ``protocol.parse_frame``, with the same functions and codes) before it is queued.
    """

    def __init__(self, writer: MessageWriter, recipients: RecipientCache, body_limit: int) -> None:
        self.writer = writer
        self.recipients = recipients
        self.body_limit = body_limit

    def submit(
        self, sender: Sender, message_id: str, to: str, recipient_id: int, body: str, callback: Callback
    ) -> None:
        """Queue a checked message to ``recipient_id`` (named ``to``); ``callback`` gets the
        outcome once its batch has committed."""
        message = new_message(message_id, sender.user_id, recipient_id, body, sender.session_id)
        self.writer.submit(message, sender.username, to.lower(), callback)

    async def send(self, sender: Sender, message_id: str, to: str, body: str) -> SendResult:
        """Check the body, find the recipient, queue and wait: the outcome, or the error raised."""
        check_body(body, self.body_limit)
        recipient_id = await self.recipients.user_id(to)
        if recipient_id is None:
            raise UnknownRecipient()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        self.submit(sender, message_id, to, recipient_id, body, done)
        outcome = await future
        if isinstance(outcome, NexoError):
            raise outcome
        return outcome


def new_message(
    message_id: str, sender_id: int, recipient_id: int, body: str, session_id: str | None = None
) -> NewMessage:
    """A message to queue; with ``session_id``, stored only while that session is live
    (checked in the insert itself on PostgreSQL; see ``repository._PG_INSERT``)."""
    return NewMessage(message_id, sender_id, recipient_id, body, now_ms(), session_id)


async def history(user_id: int, since: int, limit: int) -> list[StoredMessage]:
    return await repository.list_for_user(user_id, since, limit)


async def get_visible(message_id: str, user_id: int) -> StoredMessage:
    """The message for its sender or recipient; 404 for anyone else (and for unknown ids)."""
    found = await repository.get_for_party(message_id, user_id)
    if found is None:
        raise NotFound("no such message")
    return found


async def mark_delivered(message_id: str, recipient_id: int) -> bool:
    return await repository.mark_delivered(message_id, recipient_id, now_ms())


# What the realtime feature reads to push and to catch up: the hub (nexo/realtime/hub.py), its
# sweep and signalled reads (realtime/feeds.py) and the /ws handshake (realtime/handshake.py).


async def list_received(user_id: int, since: int, limit: int) -> list[StoredMessage]:
    """Messages received by ``user_id`` with ``seq > since``, ascending."""
    return await repository.list_received(user_id, since, limit)


async def max_seq() -> int:
    """The highest seq handed out so far (0 when empty)."""
    return await repository.max_seq()


async def recipients_between(after: int, upto: int) -> list[tuple[int, int]]:
    """(seq, recipient_id) of every message with ``after < seq <= upto``."""
    return await repository.recipients_between(after, upto)


async def received_after(cursors: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Per user id with messages above its cursor: how many, and the newest seq."""
    return await repository.received_after(cursors)


def message_json(message: StoredMessage | Delivery) -> dict[str, object]:
    """The wire form of a message (docs/messaging.md "Frames"), without ``type``."""
    return {
        "message_id": message.message_id,
        "from": message.sender,
        "to": message.recipient,
        "body": message.body,
        "seq": message.seq,
        "server_ts": message.server_ts,
    }
