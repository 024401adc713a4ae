"""One batching queue: group commit without a timer, failure isolation, draining shutdown.

:class:`BatchQueue` is the loop behind the message writer and the log's
sequencer. Producers :meth:`~BatchQueue.put` items; one consumer task takes
everything waiting (at most ``max_batch``, from the front) and awaits
``commit(batch)``. So the next batch starts the moment the previous commit
ends: under load batches grow by themselves, and a lone item is committed at
the end of the event-loop turn that queued it (no timer, no minimum size).
Batches are taken in the order of ``put`` and committed one at a time.

A batch whose ``commit`` raises goes to ``fail(batch, error)``; the owner
answers its items (it may have answered some already). :func:`bisect` is the
failure isolation a ``commit`` uses inside: an all-or-nothing attempt that is
refused is retried in halves, recursively, so one bad item fails alone and the
others of its batch still commit.

:meth:`~BatchQueue.stop` refuses new items, commits (or fails) everything
queued, then ends the task. If the consumer is cancelled instead (the loop torn
down), its batch and everything still queued go to ``fail`` with the
:class:`asyncio.CancelledError`: no item is left waiting for an answer.

Two optional hooks: ``pace()`` holds the next batch back for that many seconds
(not while stopping), and a :class:`Heartbeat` runs when nothing has been
queued for its ``due_in()`` seconds.

:class:`EndOfTurn` is the synchronous small sibling: what one turn of the
event loop adds is handed to one ``flush`` call at the end of that turn (the
WebSocket connections with frames to write, the access log's lines).

This module imports no feature code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("nexo.batching")


class QueueClosed(RuntimeError):
    """The queue is stopping or stopped: the item was not queued."""


class Heartbeat(NamedTuple):
    """Work for an idle queue: ``beat()`` once ``due_in()`` seconds pass with nothing queued."""

    due_in: Callable[[], float]
    beat: Callable[[], Awaitable[None]]


class BatchQueue(Generic[T]):
    """Items committed in batches by one consumer task (see the module docstring)."""

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[None]],
        fail: Callable[[list[T], BaseException], None],
        *,
        max_batch: int,
        name: str,
        pace: Callable[[], float] | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.name = name
        self._commit = commit
        self._fail = fail
        self._pace = pace
        self._heartbeat = heartbeat
        self._items: list[T] = []
        self._batch: list[T] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        """Started and not stopping: what is put now will be committed."""
        return self._task is not None and not self._stopping

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def put(self, item: T) -> None:
        """Queue ``item`` for the next batch (raises :class:`QueueClosed` once stopping).

        Items put before :meth:`start` wait for it."""
        if self._stopping:
            raise QueueClosed(f"{self.name} is stopping")
        self._items.append(item)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once nothing is queued and no batch is being committed."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Refuse new items, commit (or fail) everything queued, then end the task."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        self._wake.set()
        await task
        self._task = None

    async def _run(self) -> None:
        try:
            while True:
                if not self._items:
                    if self._stopping:
                        return
                    self._idle.set()
                    self._wake.clear()
                    await self._wait()
                    continue
                delay = self._pace() if self._pace is not None and not self._stopping else 0.0
                if delay > 0:
                    await asyncio.sleep(delay)
                self._batch = self._items[: self.max_batch]
                del self._items[: self.max_batch]
                try:
                    await self._commit(self._batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._give_back(self._batch, exc)
                self._batch = []
        except asyncio.CancelledError as cancelled:
            abandoned = self._batch + self._items
            self._batch, self._items = [], []
            if abandoned:
                self._give_back(abandoned, cancelled)
            self._idle.set()
            raise

    def _give_back(self, batch: list[T], error: BaseException) -> None:
        try:
            self._fail(batch, error)
        except Exception:  # the consumer must outlive a broken ``fail``
            log.exception("%s: answering a failed batch of %d failed", self.name, len(batch))

    async def _wait(self) -> None:
        """Until something is queued (or the queue stops); with a heartbeat, beat when it is due."""
        if self._heartbeat is None:
            await self._wake.wait()
            return
        try:
            await asyncio.wait_for(self._wake.wait(), self._heartbeat.due_in())
        except TimeoutError:
            await self._heartbeat.beat()


async def bisect(
    items: Sequence[T],
    attempt: Callable[[list[T]], Awaitable[R]],
    then: Callable[[list[T], R], Awaitable[None]],
    give_up: Callable[[list[T], Exception], None],
    *,
    budget: int,
    split: Callable[[list[T], Exception], bool],
    unanswered: Callable[[T], bool] | None = None,
) -> None:
    """Run ``attempt`` (all or nothing) on ``items``; if it raises, on its halves apart.

    A part whose ``attempt`` succeeds goes to ``then(part, result)`` at once;
    only ``attempt`` is ever retried, so ``then`` runs once per committed part
    and its errors propagate. A refused part is split in two (in order, so the
    halves commit in the queue's order) while it holds more than one item,
    ``budget`` allows two more attempts and ``split(part, error)`` agrees (it is
    the place to log the split, and to refuse it when every half would fail the
    same way, e.g. an unreachable database); otherwise ``give_up(part, error)``.
    With ``unanswered``, items answered during a failed attempt (``False``) are
    left out of its halves and of ``give_up``.
    """
    remaining = budget

    async def run(part: list[T]) -> None:
        nonlocal remaining
        try:
            result = await attempt(part)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            live = part if unanswered is None else [item for item in part if unanswered(item)]
            if len(live) > 1 and remaining >= 2 and split(live, exc):
                remaining -= 2
                middle = len(live) // 2
                await run(live[:middle])
                await run(live[middle:])
            else:
                give_up(live, exc)
            return
        await then(part, result)

    await run(list(items))


class EndOfTurn(Generic[T]):
    """Items added during one event-loop turn, handed to ``flush(items)`` once at its end.

    The first :meth:`add` of a turn schedules the flush with ``call_soon``, so it
    runs after the callbacks already due in this turn; items keep the order of
    ``add``. Outside a running loop an item is flushed at once. The pending items
    are taken before ``flush`` runs: what ``flush`` itself adds goes to the next
    turn, and a ``flush`` that raises is logged, not raised into the event loop,
    and takes only its own items with it. :meth:`flush_now` flushes what is
    pending at once (at shutdown).
    """

    def __init__(self, flush: Callable[[list[T]], None], *, name: str) -> None:
        self.name = name
        self._flush = flush
        self._items: list[T] = []

    @property
    def pending(self) -> int:
        """Items added and not flushed yet."""
        return len(self._items)

    def add(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) == 1:  # the first item of this turn schedules the flush
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no running loop: flush now
                self.flush_now()
                return
            loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        """Hand everything pending to ``flush`` (nothing to do if it is empty)."""
        if not self._items:
            return
        items, self._items = self._items, []
        try:
            self._flush(items)
        except Exception:  # the loop and the later turns' items must outlive a broken flush
            log.exception("%s: flushing %d items failed", self.name, len(items))
