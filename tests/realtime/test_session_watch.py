"""Which open WebSockets the session watch closes (nexo/realtime/sessions.py), without a server."""

from __future__ import annotations

from typing import Any

from nexo.realtime.sessions import ENDED, SessionWatch


class FakeConnection:
    def __init__(self, session_id: str, closing: bool = False) -> None:
        self.session_id = session_id
        self.closing = closing
        self.closed_with: list[str] = []

    def close_unauthorized(self, reason: str) -> None:
        self.closed_with.append(reason)


class FakeHub:
    def __init__(self, *conns: FakeConnection) -> None:
        self.conns = list(conns)

    def connections(self) -> list[Any]:
        return self.conns


async def test_closes_the_connections_of_ended_sessions_only() -> None:
    live, ended, also_ended = FakeConnection("s1"), FakeConnection("s2"), FakeConnection("s2")
    asked: list[set[str]] = []

    async def live_sessions(ids: set[str]) -> set[str]:
        asked.append(ids)
        return {"s1"}

    watch = SessionWatch(FakeHub(live, ended, also_ended), live_sessions)  # type: ignore[arg-type]
    assert await watch.check() == 2
    assert asked == [{"s1", "s2"}]  # one question per distinct session
    assert live.closed_with == [] and ended.closed_with == also_ended.closed_with == [ENDED]


async def test_no_connections_no_query_and_closing_ones_are_left_alone() -> None:
    async def live_sessions(ids: set[str]) -> set[str]:
        raise AssertionError("asked the database for nothing")

    assert await SessionWatch(FakeHub(), live_sessions).check() == 0  # type: ignore[arg-type]
    closing = FakeConnection("gone", closing=True)
    assert await SessionWatch(FakeHub(closing), live_sessions).check() == 0  # type: ignore[arg-type]
    assert closing.closed_with == []


async def test_a_connection_renewed_during_the_query_is_not_judged_by_its_old_session() -> None:
    renewed = FakeConnection("old")

    async def live_sessions(ids: set[str]) -> set[str]:
        renewed.session_id = "new"  # an in-band auth frame landed meanwhile
        return set()

    assert await SessionWatch(FakeHub(renewed), live_sessions).check() == 0  # type: ignore[arg-type]
    assert renewed.closed_with == []
