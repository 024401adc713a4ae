"""The batching queue behind the message writer and the sequencer (nexo/platform/batching.py),
and its end-of-loop-turn sibling behind the WebSocket flusher and the access log.

Each test commits into a real SQLite database in memory: a batch is one
transaction (all or nothing), and a ``CHECK`` constraint refuses the poisoned
body, as the database refuses a row in production.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import pytest

from nexo.platform.batching import BatchQueue, EndOfTurn, Heartbeat, QueueClosed, bisect

POISON = "poison"


class Store:
    """A table the batches commit into; ``seq`` is the commit order."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        self.db.execute(f"CREATE TABLE rows (seq INTEGER PRIMARY KEY, body TEXT CHECK (body != '{POISON}'))")
        self.transactions = 0

    def insert(self, bodies: list[str]) -> list[int]:
        """One transaction: every body stored, or none (``sqlite3.IntegrityError``)."""
        self.transactions += 1
        self.db.execute("BEGIN")
        try:
            seqs = [
                self.db.execute("INSERT INTO rows (body) VALUES (?)", (b,)).lastrowid or 0 for b in bodies
            ]
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return seqs

    def bodies(self) -> list[str]:
        return [body for (body,) in self.db.execute("SELECT body FROM rows ORDER BY seq")]


@dataclass
class Item:
    body: str
    future: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Writer:
    """A minimal owner of a queue, shaped like the message writer: commit with isolation,
    answer each item with its seq or its own error."""

    def __init__(self, max_batch: int = 1000, *, budget: int = 64, gate: asyncio.Event | None = None) -> None:
        self.store = Store()
        self.batches: list[list[str]] = []
        self.failed_batches: list[tuple[list[str], BaseException]] = []
        self.gate = gate
        self.queue: BatchQueue[Item] = BatchQueue(
            self.commit, self.fail, max_batch=max_batch, name="test-writer"
        )
        self.budget = budget

    async def commit(self, batch: list[Item]) -> None:
        self.batches.append([item.body for item in batch])
        if self.gate is not None:
            await self.gate.wait()

        async def attempt(part: list[Item]) -> list[int]:
            await asyncio.sleep(0)  # a commit awaits the database
            return self.store.insert([item.body for item in part])

        async def then(part: list[Item], seqs: list[int]) -> None:
            for item, seq in zip(part, seqs, strict=True):
                item.future.set_result(seq)

        def give_up(part: list[Item], error: Exception) -> None:
            for item in part:
                item.future.set_exception(error)

        await bisect(batch, attempt, then, give_up, budget=self.budget, split=lambda part, error: True)

    def fail(self, batch: list[Item], error: BaseException) -> None:
        self.failed_batches.append(([item.body for item in batch], error))
        for item in batch:
            if not item.future.done():
                item.future.set_exception(RuntimeError(f"batch failed: {error!r}"))

    def put(self, body: str) -> Item:
        item = Item(body)
        self.queue.put(item)
        return item


async def answers(items: list[Item], *, return_exceptions: bool = False) -> list[Any]:
    """Every item's outcome; a bug that leaves one unanswered fails here instead of hanging."""
    gathered = asyncio.gather(*(item.future for item in items), return_exceptions=return_exceptions)
    return await asyncio.wait_for(gathered, 5)


async def test_items_are_committed_in_the_order_they_were_put_in_batches_of_at_most_max_batch() -> None:
    writer = Writer(max_batch=64)
    writer.queue.start()
    items = []
    for chunk in range(10):
        items += [writer.put(f"m{chunk}-{i}") for i in range(100)]
        await asyncio.sleep(0)  # some chunks land in a batch already being taken, some wait
    seqs = await answers(items)
    assert seqs == sorted(seqs) and len(set(seqs)) == 1000
    assert writer.store.bodies() == [item.body for item in items]
    assert [body for batch in writer.batches for body in batch] == [item.body for item in items]
    assert max(len(batch) for batch in writer.batches) == 64
    await writer.queue.stop()


async def test_a_lone_item_is_committed_at_the_end_of_its_loop_turn_without_a_timer() -> None:
    writer = Writer()
    writer.queue.start()
    await asyncio.sleep(0)  # the consumer waits for work
    loop = asyncio.get_running_loop()
    started = loop.time()
    item = writer.put("alone")
    for _ in range(5):  # a few loop turns: wake-up, the attempt's own await, the answer
        if item.future.done():
            break
        await asyncio.sleep(0)
    assert item.future.done() and item.future.result() == 1
    assert loop.time() - started < 0.05
    assert writer.batches == [["alone"]]
    await writer.queue.stop()


async def test_what_is_put_in_one_turn_is_one_batch_and_what_waits_behind_a_commit_is_the_next() -> None:
    gate = asyncio.Event()
    writer = Writer(gate=gate)
    writer.queue.start()
    first = [writer.put(f"a{i}") for i in range(10)]
    await asyncio.sleep(0.01)  # the first batch is taken and held at the gate
    second = [writer.put(f"b{i}") for i in range(5)]
    await asyncio.sleep(0)
    second += [writer.put(f"b{i}") for i in range(5, 20)]
    idle = asyncio.create_task(writer.queue.wait_idle())
    await asyncio.sleep(0.01)
    assert not idle.done()  # committing, and more queued
    gate.set()
    await asyncio.wait_for(idle, 5)
    assert all(item.future.done() for item in first + second)
    assert writer.batches == [[f"a{i}" for i in range(10)], [f"b{i}" for i in range(20)]]
    await writer.queue.stop()


@pytest.mark.parametrize("poisoned_at", [0, 37, 99])
async def test_one_poisoned_item_among_100_fails_alone_with_its_own_error(poisoned_at: int) -> None:
    writer = Writer()
    writer.queue.start()
    bodies = [f"m{i}" for i in range(100)]
    bodies[poisoned_at] = POISON
    items = [writer.put(body) for body in bodies]
    outcomes = await answers(items, return_exceptions=True)
    assert len(writer.batches) == 1  # all in one group commit
    error = outcomes[poisoned_at]
    assert isinstance(error, sqlite3.IntegrityError) and "CHECK" in str(error)
    others = [outcome for i, outcome in enumerate(outcomes) if i != poisoned_at]
    assert all(isinstance(seq, int) for seq in others)
    assert others == sorted(others)  # the halves commit in the queue's order
    assert writer.store.bodies() == [body for body in bodies if body != POISON]
    # 1 refused batch + two halves per level of bisection: about 2·log2(100) transactions.
    assert writer.store.transactions <= 1 + 2 * 7
    assert writer.failed_batches == []
    await writer.queue.stop()


async def test_bisection_stops_when_the_budget_is_spent_and_fails_the_rest_together() -> None:
    writer = Writer(budget=0)
    writer.queue.start()
    items = [writer.put(POISON if i == 3 else f"m{i}") for i in range(8)]
    outcomes = await answers(items, return_exceptions=True)
    assert all(isinstance(outcome, sqlite3.IntegrityError) for outcome in outcomes)
    assert writer.store.bodies() == [] and writer.store.transactions == 1
    await writer.queue.stop()


async def test_bisect_does_not_split_when_told_not_to_and_never_retries_a_committed_part() -> None:
    store = Store()
    given_up: list[list[str]] = []
    answered: list[list[str]] = []

    async def attempt(part: list[str]) -> list[int]:
        return store.insert(part)

    async def then(part: list[str], seqs: list[int]) -> None:
        answered.append(part)
        raise RuntimeError("the answer failed")

    def give_up(part: list[str], error: Exception) -> None:
        given_up.append(part)

    # The "database unreachable" case: every half would fail the same way.
    await bisect(["a", POISON, "b"], attempt, then, give_up, budget=64, split=lambda part, error: False)
    assert given_up == [["a", POISON, "b"]] and store.transactions == 1
    # An error after a part committed propagates; the part is not attempted again.
    with pytest.raises(RuntimeError, match="the answer failed"):
        await bisect(["c", "d"], attempt, then, give_up, budget=64, split=lambda part, error: True)
    assert answered == [["c", "d"]] and store.bodies() == ["c", "d"] and store.transactions == 2


async def test_bisect_leaves_out_items_answered_during_a_refused_attempt() -> None:
    answered = {"b"}  # e.g. refused by a claim inside the transaction that then rolled back
    attempts: list[list[str]] = []
    given_up: list[list[str]] = []

    async def attempt(part: list[str]) -> None:
        attempts.append(part)
        if POISON in part:
            raise sqlite3.IntegrityError("refused")

    async def then(part: list[str], result: None) -> None:
        pass

    await bisect(
        ["a", "b", POISON, "c"],
        attempt,
        then,
        lambda part, error: given_up.append(part),
        budget=64,
        split=lambda part, error: True,
        unanswered=lambda item: item not in answered,
    )
    assert all("b" not in part for part in attempts[1:])
    assert given_up == [[POISON]]


async def test_stop_commits_everything_put_before_it_and_refuses_what_comes_after() -> None:
    gate = asyncio.Event()
    writer = Writer(max_batch=50, gate=gate)
    writer.queue.start()
    items = [writer.put(f"m{i}") for i in range(500)]
    await asyncio.sleep(0)
    stopping = asyncio.create_task(writer.queue.stop())
    await asyncio.sleep(0.01)
    assert not writer.queue.running
    with pytest.raises(QueueClosed):
        writer.put("late")
    gate.set()
    await asyncio.wait_for(stopping, 5)
    assert [item.future.result() for item in items] == list(range(1, 501))
    assert writer.store.bodies() == [f"m{i}" for i in range(500)]


async def test_a_batch_that_fails_during_the_drain_is_failed_not_left_hanging() -> None:
    writer = Writer(max_batch=10)
    real_commit = writer.commit

    async def commit(batch: list[Item]) -> None:
        if batch[0].body == "m10":
            raise ConnectionError("the database went away")
        await real_commit(batch)

    writer.queue = BatchQueue(commit, writer.fail, max_batch=10, name="test-writer")
    writer.queue.start()
    items = [writer.put(f"m{i}") for i in range(30)]
    await asyncio.wait_for(writer.queue.stop(), 5)
    assert all(item.future.done() for item in items)
    outcomes = [item.future.exception() for item in items]
    assert [i for i, error in enumerate(outcomes) if error is not None] == list(range(10, 20))
    assert writer.store.bodies() == [f"m{i}" for i in [*range(10), *range(20, 30)]]
    assert [(bodies[0], type(error)) for bodies, error in writer.failed_batches] == [("m10", ConnectionError)]


async def test_a_cancelled_consumer_fails_its_batch_and_everything_queued() -> None:
    gate = asyncio.Event()  # never set: the first batch hangs in its commit
    writer = Writer(max_batch=4, gate=gate)
    writer.queue.start()
    items = [writer.put(f"m{i}") for i in range(10)]
    await asyncio.sleep(0.01)
    (consumer,) = [task for task in asyncio.all_tasks() if task.get_name() == "test-writer"]
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert all(isinstance(item.future.exception(), RuntimeError) for item in items)
    ((bodies, error),) = writer.failed_batches
    assert bodies == [f"m{i}" for i in range(10)] and isinstance(error, asyncio.CancelledError)
    await asyncio.wait_for(writer.queue.wait_idle(), 1)


async def test_many_producers_each_see_their_items_committed_once_and_in_their_order() -> None:
    writer = Writer(max_batch=128)
    writer.queue.start()
    put_order: list[str] = []
    rng = random.Random(16)

    async def producer(p: int) -> list[int]:
        seqs = []
        pending = []
        for i in range(40):
            body = f"p{p}-{i}"
            pending.append(writer.put(body))
            put_order.append(body)
            if rng.random() < 0.3:
                seqs += [await item.future for item in pending]  # wait for some answers
                pending = []
            elif rng.random() < 0.5:
                await asyncio.sleep(0)
        return seqs + [await item.future for item in pending]

    results = await asyncio.wait_for(asyncio.gather(*(producer(p) for p in range(50))), 10)
    for seqs in results:
        assert len(seqs) == 40 and seqs == sorted(seqs)
    assert writer.store.bodies() == put_order  # every item once, in the global order of put
    assert len(writer.batches) > 1
    await writer.queue.stop()


async def test_pace_holds_the_next_batch_back_and_is_skipped_while_stopping() -> None:
    committed: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def commit(batch: list[int]) -> None:
        committed.append((loop.time(), batch))

    queue: BatchQueue[int] = BatchQueue(
        commit, lambda b, e: None, max_batch=100, name="paced", pace=lambda: 0.05
    )
    queue.start()
    started = loop.time()
    queue.put(1)
    await asyncio.sleep(0.01)
    queue.put(2)  # arrives while the first is held: same batch
    await queue.wait_idle()
    assert committed[0][1] == [1, 2] and committed[0][0] - started >= 0.045
    queue.put(3)
    before = loop.time()
    await queue.stop()
    assert committed[1][1] == [3] and committed[1][0] - before < 0.04


async def test_a_heartbeat_runs_when_nothing_was_put_for_its_period() -> None:
    beats: list[float] = []
    committed: list[list[int]] = []
    loop = asyncio.get_running_loop()

    async def beat() -> None:
        beats.append(loop.time())

    async def commit(batch: list[int]) -> None:
        committed.append(batch)

    queue: BatchQueue[int] = BatchQueue(
        commit, lambda b, e: None, max_batch=10, name="beating", heartbeat=Heartbeat(lambda: 0.02, beat)
    )
    queue.start()
    await asyncio.sleep(0.07)
    assert 2 <= len(beats) <= 4
    queue.put(1)
    await queue.wait_idle()
    assert committed == [[1]]
    await queue.stop()


# -- EndOfTurn: collect during one loop turn, flush once at its end ---------------------------


class Flushes:
    """A ``flush`` that records each call; ``refuse`` makes the calls holding it raise."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.refuse = refuse

    def __call__(self, items: list[str]) -> None:
        self.calls.append(list(items))
        if self.refuse in items:
            raise RuntimeError(f"cannot write {self.refuse}")


async def test_what_one_loop_turn_adds_is_flushed_once_at_its_end_in_order() -> None:
    flushes = Flushes()
    turn: EndOfTurn[str] = EndOfTurn(flushes, name="lines")
    for item in ("a", "b", "c"):
        turn.add(item)
    assert flushes.calls == [] and turn.pending == 3  # nothing yet: the turn has not ended
    await asyncio.sleep(0)
    assert flushes.calls == [["a", "b", "c"]] and turn.pending == 0
    turn.add("d")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert flushes.calls == [["a", "b", "c"], ["d"]]


async def test_tasks_running_in_the_same_turn_share_one_flush() -> None:
    flushes = Flushes()
    turn: EndOfTurn[str] = EndOfTurn(flushes, name="lines")

    async def producer(name: str) -> None:
        turn.add(f"{name}1")
        turn.add(f"{name}2")

    await asyncio.gather(producer("x"), producer("y"))  # both run in one iteration of the loop
    await asyncio.sleep(0)
    assert flushes.calls == [["x1", "x2", "y1", "y2"]]


async def test_the_flush_runs_after_the_callbacks_already_due_in_its_turn() -> None:
    order: list[str] = []
    turn: EndOfTurn[str] = EndOfTurn(lambda items: order.append("flush " + ",".join(items)), name="lines")
    loop = asyncio.get_running_loop()
    loop.call_soon(order.append, "earlier callback")
    turn.add("a")
    loop.call_soon(turn.add, "b")  # due in the same iteration as the flush, but after it
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["earlier callback", "flush a", "flush b"]


async def test_a_failing_flush_is_logged_and_loses_neither_the_loop_nor_later_items(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flushes = Flushes(refuse="bad")
    turn: EndOfTurn[str] = EndOfTurn(flushes, name="lines")
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    after: list[str] = []
    turn.add("ok")
    turn.add("bad")
    loop.call_soon(after.append, "later callback")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert flushes.calls == [["ok", "bad"]] and after == ["later callback"]
    assert unhandled == []  # caught and logged, not raised into the event loop
    assert "lines: flushing 2 items failed" in caplog.text and "cannot write bad" in caplog.text
    turn.add("next")
    turn.add("turn")
    await asyncio.sleep(0)
    assert flushes.calls == [["ok", "bad"], ["next", "turn"]]


async def test_what_the_flush_itself_adds_goes_to_the_next_turn_in_order() -> None:
    calls: list[list[int]] = []

    def flush(items: list[int]) -> None:
        calls.append(items)
        if items == [1, 2]:
            turn.add(3)

    turn: EndOfTurn[int] = EndOfTurn(flush, name="numbers")
    turn.add(1)
    turn.add(2)
    await asyncio.sleep(0)
    assert calls == [[1, 2]] and turn.pending == 1
    await asyncio.sleep(0)
    assert calls == [[1, 2], [3]]


async def test_flush_now_at_shutdown_flushes_the_rest_once() -> None:
    flushes = Flushes()
    turn: EndOfTurn[str] = EndOfTurn(flushes, name="lines")
    turn.add("a")
    turn.add("b")
    turn.flush_now()
    assert flushes.calls == [["a", "b"]] and turn.pending == 0
    await asyncio.sleep(0)  # the flush scheduled for the end of the turn finds nothing
    turn.flush_now()
    assert flushes.calls == [["a", "b"]]


def test_outside_a_running_loop_each_item_is_flushed_at_once() -> None:
    flushes = Flushes()
    turn: EndOfTurn[str] = EndOfTurn(flushes, name="lines")
    turn.add("a")
    turn.add("b")
    assert flushes.calls == [["a"], ["b"]]
