"""Messages: exactly-once storage through a group-commit writer, history, delivery marks.

Group commit (docs/messaging.md "How sends are stored"): every ``send`` of
every connection of this process goes into one
:class:`nexo.platform.batching.BatchQueue`. Its single task takes *everything* waiting,
commits it with one multi-row INSERT, then answers each sender — so the next
batch starts the moment the previous commit ends (no timer), and a lone
message takes the plain one-row path at once. An answer (``ack``) is
given only after the commit returns and the commit listener's push signal
to other processes is published (so no ack outruns the signal).

Failure isolation (:func:`nexo.platform.batching.bisect`): a batch the database
refuses is split in halves and each half committed on its own, recursively,
so a row only the database objects to (a constraint, an encoding) fails
alone and every other message of the batch is stored and acked; a batch is
split at most :data:`MAX_ISOLATION_COMMITS` times, and never when the
database is unreachable (every half would fail the same way). Input is validated before
it is queued (:class:`MessageSender`, ``protocol.parse_frame``), so a client
cannot normally reach this path.

Exactly-once: ``message_id`` is unique in the database; the INSERT skips ids
that exist (``ON CONFLICT DO NOTHING``) and the skipped ones are read back
after the commit: same sender, recipient and body → the original ``seq``
with ``duplicate=True``; anything else → :class:`MessageIdConflict`, which
says nothing about the original. Concurrent duplicates in other processes
are resolved by the same constraint (PostgreSQL makes the second INSERT wait
for the first to commit).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from prometheus_client import Counter, Histogram

from nexo.auth.service import USERNAME_RE
from nexo.messages import repository
from nexo.messages.repository import NewMessage, StoredMessage
from nexo.platform import db
from nexo.platform.batching import BatchQueue, QueueClosed, bisect
from nexo.platform.errors import ErrorCode, NexoError, NotFound, Unauthorized
from nexo.platform.text import body_problem

log = logging.getLogger("nexo.messages")

#: Largest batch one commit takes; more waiting messages go in the next one.
MAX_BATCH = 2000
#: Extra commits one failed batch may spend isolating its bad rows (about 2·log2(batch) per bad row).
MAX_ISOLATION_COMMITS = 64
#: How long a username → user id answer is reused (seconds).
RECIPIENT_CACHE_SECONDS = 30.0

ACKED = Counter("nexo_messages_acked_total", "Sends answered with an ack (new and duplicate)")
STORED = Counter("nexo_messages_stored_total", "Messages stored (new rows)")
DUPLICATES = Counter(
    "nexo_messages_duplicates_suppressed_total", "Sends that were duplicates of a stored message"
)
CONFLICTS = Counter("nexo_messages_id_conflicts_total", "Sends refused with message_id_conflict")
BATCH_SIZE = Histogram(
    "nexo_messages_commit_batch_size",
    "Messages per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
COMMIT_SECONDS = Histogram(
    "nexo_messages_commit_seconds",
    "Time of one group commit",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


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


class _Pending:
    __slots__ = ("callback", "message", "recipient", "sender")

    def __init__(self, message: NewMessage, sender: str, recipient: str, callback: Callback) -> None:
        self.message = message
        self.sender = sender
        self.recipient = recipient
        self.callback = callback


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


class MessageWriter:
    """The per-process group-commit writer (see the module docstring)."""

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self._queue: BatchQueue[_Pending] = BatchQueue(
            self._commit, _fail, max_batch=max_batch, name="nexo-message-writer"
        )
        #: Called with every batch of newly stored messages, after commit and before the acks.
        self.listeners: list[CommitListener] = []
        #: The newest batch's gate while its acks wait for it (later batches queue behind it).
        self._gate: Gate | None = None

    @property
    def max_batch(self) -> int:
        return self._queue.max_batch

    def start(self) -> None:
        self._queue.start()

    def submit(self, message: NewMessage, sender: str, recipient: str, callback: Callback) -> None:
        """Queue ``message``; ``callback`` gets the outcome once its batch has committed
        (at once a :class:`StorageUnavailable` once the writer is closed)."""
        item = _Pending(message, sender, recipient, callback)
        try:
            self._queue.put(item)
        except QueueClosed:
            _answer(item, StorageUnavailable("the server is shutting down; retry with the same message_id"))

    async def drain(self) -> None:
        """Wait until every queued message is committed and answered."""
        await self._queue.wait_idle()
        gate = self._gate
        if gate is not None and not gate.done():
            await asyncio.wait([gate])
            await asyncio.sleep(0)  # the answers run as the gate's callbacks

    async def close(self) -> None:
        await self.drain()
        await self._queue.stop()

    async def _commit(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        first: dict[str, _Pending] = {}
        for item in batch:
            first.setdefault(item.message.message_id, item)
        inserted, failed = await _insert_isolating(list(first.values()))
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        BATCH_SIZE.observe(len(batch))
        missing = [mid for mid in first if mid not in inserted and mid not in failed]
        existing = await repository.get_by_message_ids(missing) if missing else {}
        deliveries = [
            Delivery(
                seq=inserted[mid],
                message_id=mid,
                sender_id=item.message.sender_id,
                recipient_id=item.message.recipient_id,
                sender=item.sender,
                recipient=item.recipient,
                body=item.message.body,
                server_ts=item.message.server_ts,
            )
            for mid, item in first.items()
            if mid in inserted
        ]
        outcomes: list[tuple[_Pending, Outcome]] = []
        resent: set[int] = set()
        for item in batch:
            message = item.message
            mid = message.message_id
            seq = inserted.get(mid)
            if mid in failed:
                outcome: Outcome = failed[mid]
            elif seq is not None and first[mid] is item:
                outcome = SendResult(mid, seq, message.server_ts, False)
            elif seq is None and mid not in existing and first[mid].message.session_id is not None:
                outcome = SessionEnded()  # refused by the insert's live-session check
            else:
                original = existing.get(mid) or _as_stored(first[mid], seq)
                outcome = _duplicate_or_conflict(message, original)
                if isinstance(outcome, SendResult) and mid not in inserted:
                    # Stored earlier, perhaps by a process that died before its push signal.
                    resent.add(message.recipient_id)
            outcomes.append((item, outcome))
        if deliveries:
            STORED.inc(len(deliveries))
        gate = self._notify(deliveries, resent) if deliveries or resent else None
        if gate is None and self._gate is not None and not self._gate.done():
            gate = self._gate  # keep the acks in batch order
        if gate is None:
            self._answer_all(outcomes)
        else:
            self._gate = gate
            gate.add_done_callback(lambda _gate: self._answer_all(outcomes))

    def _notify(self, deliveries: list[Delivery], resent: set[int]) -> Gate | None:
        gates = []
        for listener in self.listeners:
            try:
                gate = listener(deliveries, resent)
            except Exception:  # a push failure must never lose the acks
                log.exception("message commit listener failed")
                continue
            if gate is not None and not gate.done():
                gates.append(gate)
        if len(gates) > 1:
            return asyncio.gather(*gates, return_exceptions=True)
        return gates[0] if gates else None

    def _answer_all(self, outcomes: list[tuple[_Pending, Outcome]]) -> None:
        acked = duplicates = 0
        for item, outcome in outcomes:
            if isinstance(outcome, SendResult):
                acked += 1
                duplicates += outcome.duplicate
            else:
                CONFLICTS.inc()
            _answer(item, outcome)
        ACKED.inc(acked)
        if duplicates:
            DUPLICATES.inc(duplicates)


async def _insert_isolating(items: list[_Pending]) -> tuple[dict[str, int], dict[str, NexoError]]:
    """Insert ``items`` (distinct ids); ``({message_id: seq}, {message_id: error})``.

    A refused batch is bisected (halves in order, so seqs keep the queue's
    order) until the refused rows stand alone; see the module docstring.
    """
    inserted: dict[str, int] = {}
    failed: dict[str, NexoError] = {}

    async def attempt(part: list[_Pending]) -> dict[str, int]:
        return await repository.insert_batch([item.message for item in part])

    async def then(part: list[_Pending], seqs: dict[str, int]) -> None:
        inserted.update(seqs)

    def split(part: list[_Pending], error: Exception) -> bool:
        if db.unreachable(error):
            return False
        log.warning(
            "message batch of %d refused (%s); committing its halves apart", len(part), _describe(error)
        )
        return True

    def give_up(part: list[_Pending], error: Exception) -> None:
        log.error(
            "%d message(s) could not be stored; nothing acked for them (first %s)",
            len(part),
            part[0].message.message_id,
            exc_info=error,
        )
        unavailable = StorageUnavailable("the message could not be stored; retry with the same message_id")
        failed.update((item.message.message_id, unavailable) for item in part)

    await bisect(items, attempt, then, give_up, budget=MAX_ISOLATION_COMMITS, split=split)
    return inserted, failed


def _fail(batch: list[_Pending], error: BaseException) -> None:
    """A batch the writer could not finish (an error after the inserts, or the writer
    cancelled): nothing of it is acked; the senders retry with the same ids."""
    if not isinstance(error, asyncio.CancelledError):
        log.error("message batch of %d failed to commit; nothing acked", len(batch), exc_info=error)
    unavailable = StorageUnavailable("the message could not be stored; retry with the same message_id")
    for item in batch:
        _answer(item, unavailable)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


def _as_stored(item: _Pending, seq: int | None) -> StoredMessage | None:
    if seq is None:
        return None
    m = item.message
    return StoredMessage(seq, m.message_id, m.sender_id, m.recipient_id, m.body, m.server_ts)


def _duplicate_or_conflict(message: NewMessage, original: StoredMessage | None) -> Outcome:
    if original is None:
        # Skipped by the constraint yet not readable: cannot happen with committed rows.
        return StorageUnavailable("the message could not be stored; retry with the same message_id")
    if (
        original.sender_id == message.sender_id
        and original.recipient_id == message.recipient_id
        and original.body == message.body
    ):
        return SendResult(original.message_id, original.seq, original.server_ts, True)
    return MessageIdConflict()


def _answer(item: _Pending, outcome: Outcome) -> None:
    try:
        item.callback(outcome)
    except Exception:
        log.exception("message callback failed")


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


# What the realtime feature reads to push and to catch up (nexo/realtime/hub.py).


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
