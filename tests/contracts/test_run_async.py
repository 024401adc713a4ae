"""``contracts.server.run_async``: the fixtures' ``asyncio.run`` also works where an event loop
is already running in the thread, as under Playwright's sync API (tests/browser on PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading

from contracts.server import run_async


async def _where() -> tuple[str, int]:
    await asyncio.sleep(0)
    return threading.current_thread().name, id(asyncio.get_running_loop())


def test_without_a_running_loop_it_is_asyncio_run_here() -> None:
    name, _ = run_async(_where())
    assert name == threading.current_thread().name


def test_under_a_running_loop_it_runs_on_a_thread_of_its_own() -> None:
    async def inside() -> tuple[tuple[str, int], int]:
        # asyncio.run(_where()) here raises "cannot be called from a running event loop".
        return run_async(_where()), id(asyncio.get_running_loop())

    (name, loop), outer = asyncio.run(inside())
    assert name.startswith("run-async") and loop != outer
