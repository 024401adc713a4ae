"""``GET /api/health``: O(1) per request, 503 when the database stops answering.

A background task reads the maintained counters (``nexo.platform.counters``) every
``REFRESH_SECONDS``; the endpoint only formats that snapshot, so it costs no
database work however large the tables grow. When the last successful read is
older than ``STALE_SECONDS`` the service reports ``degraded`` with 503.

``snapshot_age_ms`` says how old the snapshot is: milliseconds since the read that
made it *started*, so the snapshot holds every commit made before that moment. On
SQLite the read goes through the process's read-only :class:`nexo.platform.db.QuickReader`
connection, which in WAL mode never waits behind the writer: a burst of device
registrations (one write transaction after another on the single writer connection)
no longer delays the snapshot; it stays within about one refresh of the database.

The latest STH older than ``NEXO_STH_MAX_AGE`` plus ``STH_AGE_GRACE_SECONDS``
(the heartbeat should have renewed it) adds an ``sth_stale`` warning: the log
looks frozen to a monitor, though the service still answers (200).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from nexo import __version__
from nexo.context import NexoApp, app_context
from nexo.platform import counters
from nexo.platform.tasks import cancel_and_wait, repeat
from nexo.platform.timefmt import utc_iso

log = logging.getLogger("nexo.health")

REFRESH_SECONDS = 0.25
STALE_SECONDS = 2.0
QUERY_TIMEOUT = 1.0
#: Slack on ``NEXO_STH_MAX_AGE`` before health warns (the heartbeat needs a lock and a commit).
STH_AGE_GRACE_SECONDS = 10.0

bp = Blueprint("health", url_prefix="/api")


@dataclass
class HealthMonitor:
    """Holds the latest counter snapshot and refreshes it off the request path."""

    database: str
    sth_max_age: float = 300.0
    values: dict[str, int] = field(default_factory=dict)
    #: ``time.monotonic()`` when the read behind ``values`` started (0: never read).
    last_ok: float = 0.0
    last_error: str | None = None
    _task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        started = time.monotonic()
        try:
            values = counters.read_all_now()
            if values is None:  # PostgreSQL, or SQLite could not be read at once
                values = await asyncio.wait_for(counters.read_all(), QUERY_TIMEOUT)
        except Exception as exc:  # any failure means "the database does not answer"
            if self.last_error is None:
                log.error("health: database check failed: %r", exc)
            self.last_error = repr(exc) or type(exc).__name__
            return
        if self.last_error is not None:
            log.warning("health: database answers again")
        self.values = values
        self.last_ok = started
        self.last_error = None

    def start(self) -> None:
        self._task = repeat(REFRESH_SECONDS, self.refresh, "nexo-health")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def report(self) -> tuple[int, dict[str, object]]:
        snapshot_age = time.monotonic() - self.last_ok
        healthy = snapshot_age <= STALE_SECONDS
        now = datetime.now(UTC)
        body: dict[str, object] = {
            "status": "ok" if healthy else "degraded",
            "timestamp": utc_iso(now),
            "snapshot_age_ms": int(snapshot_age * 1000),
            "users_count": self.values.get("users", 0),
            "sth_count": self.values.get("sths", 0),
            "version": __version__,
            "database": self.database,
        }
        latest_ms = self.values.get("sth_latest_timestamp_ms")
        if self.values.get("sths"):
            body["sth_latest_index"] = self.values["sths"] - 1
            if latest_ms:
                age = max(0.0, now.timestamp() - latest_ms / 1000)
                body["sth_latest_age_seconds"] = round(age, 3)
                body["sth_max_age_seconds"] = self.sth_max_age
                if age > self.sth_max_age + STH_AGE_GRACE_SECONDS:
                    body["warnings"] = [
                        {
                            "code": "sth_stale",
                            "message": f"the latest STH is {age:.0f} s old; the heartbeat should renew it "
                            f"every {self.sth_max_age:g} s (NEXO_STH_MAX_AGE)",
                        }
                    ]
        if not healthy:
            body["error"] = {"code": "database_unavailable", "message": "the database does not answer"}
        return (200 if healthy else 503), body


def setup(app: NexoApp) -> None:
    app.blueprint(bp)

    @app.before_server_start
    async def start_health(app: NexoApp) -> None:
        monitor = HealthMonitor(
            database=app.ctx.settings.database_kind, sth_max_age=app.ctx.settings.sth_max_age
        )
        await monitor.refresh()
        monitor.start()
        app.ctx.health = monitor

    @app.before_server_stop
    async def stop_health(app: NexoApp) -> None:
        await app.ctx.health.stop()


@bp.get("/health")
async def health(request: Request) -> HTTPResponse:
    status, body = app_context(request).health.report()
    return json(body, status=status, headers={"Cache-Control": "no-store"})
