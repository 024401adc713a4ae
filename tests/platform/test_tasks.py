"""Stopping background tasks (nexo/platform/tasks.py)."""

from __future__ import annotations

import asyncio

from nexo.platform.tasks import cancel_and_wait, repeat


async def test_cancel_and_wait_returns_once_the_task_has_stopped() -> None:
    cleaned = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # its clean-up may itself await
            cleaned.set()

    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned.is_set()


async def test_cancel_and_wait_accepts_no_task_and_a_finished_one() -> None:
    await cancel_and_wait(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await cancel_and_wait(done)
    assert done.done() and not done.cancelled()


async def test_repeat_runs_the_work_after_each_pause_until_cancelled() -> None:
    runs: list[float] = []
    three = asyncio.Event()

    async def work() -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) == 3:
            three.set()

    task = repeat(0.01, work, "test-repeat")
    assert task.get_name() == "test-repeat"
    await asyncio.wait_for(three.wait(), 10)
    await cancel_and_wait(task)
    assert task.cancelled()
    count = len(runs)
    await asyncio.sleep(0.05)
    assert len(runs) == count
