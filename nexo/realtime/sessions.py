"""Open WebSockets follow their session: logout and account deletion close them with 4401.

An HTTP request is checked against its session every time (``nexo/auth/guard.py``);
a WebSocket is authenticated once, when it opens (or renews in band). So each
worker checks the sessions of its open connections every :data:`CHECK_SECONDS`,
with one query per :data:`nexo.auth.repository.LIVE_SESSIONS_CHUNK` sessions, and
closes with 4401 those whose session was revoked (logout, logout everywhere,
refresh-token reuse) or whose account was deleted. The database is the truth, so
this holds across workers and instances with no broker message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nexo.platform.tasks import cancel_and_wait
from nexo.realtime.hub import Hub

log = logging.getLogger("nexo.realtime")

#: How often each worker checks the sessions of its open connections (seconds). A session
#: ended through this worker closes its connections here at once (``Hub.end_sessions``);
#: on another worker or instance within this, plus the close (``connection.END_SECONDS``).
CHECK_SECONDS = 0.5
#: The close reason a client sees.
ENDED = "session ended (logged out, or the account was deleted); log in again"

LiveSessions = Callable[[set[str]], Awaitable[set[str]]]


class SessionWatch:
    """Closes this process's connections whose session has ended."""

    def __init__(self, hub: Hub, live_sessions: LiveSessions, interval: float = CHECK_SECONDS) -> None:
        self.hub = hub
        self.live_sessions = live_sessions
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nexo-ws-sessions")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # the database is away: try again next time
                log.exception("checking the sessions of open WebSockets failed")

    async def check(self) -> int:
        """One pass; returns how many connections it closed."""
        # The session each connection had when asked: one renewed in band meanwhile is
        # judged again on the next pass, never by its old session.
        asked = [(conn, conn.session_id) for conn in self.hub.connections() if not conn.closing]
        if not asked:
            return 0
        live = await self.live_sessions({session for _, session in asked})
        ended = [conn for conn, session in asked if session not in live and conn.session_id == session]
        for conn in ended:
            conn.close_unauthorized(ENDED)
        return len(ended)
