"""The group-commit writer: every send of this process, stored exactly once.

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
it is queued (:class:`nexo.messages.service.MessageSender`, ``protocol.parse_frame``), so a client
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
import time

from prometheus_client import Counter, Histogram

from nexo.messages import repository
from nexo.messages.repository import NewMessage, StoredMessage
from nexo.messages.service import (
    Callback,
    CommitListener,
    Delivery,
    Gate,
    MessageIdConflict,
    Outcome,
    SendResult,
    SessionEnded,
    StorageUnavailable,
)
from nexo.platform import db
from nexo.platform.batching import BatchQueue, QueueClosed, bisect
from nexo.platform.errors import NexoError

log = logging.getLogger("nexo.messages")

#: Largest batch one commit takes; more waiting messages go in the next one.
MAX_BATCH = 2000
#: Extra commits one failed batch may spend isolating its bad rows (about 2·log2(batch) per bad row).
MAX_ISOLATION_COMMITS = 64

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


class _Pending:
    __slots__ = ("callback", "message", "recipient", "sender")

    def __init__(self, message: NewMessage, sender: str, recipient: str, callback: Callback) -> None:
        self.message = message
        self.sender = sender
        self.recipient = recipient
        self.callback = callback


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
