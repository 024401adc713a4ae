"""Background asyncio tasks: the one way Nexo repeats them and the one way it stops them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if there is one) and return once it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def repeat(seconds: float, work: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
    """A task that awaits ``work()`` every ``seconds`` (after each pause) until cancelled."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            await work()

    return asyncio.get_running_loop().create_task(loop(), name=name)
