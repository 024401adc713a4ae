"""Routes of the browser side: ``/`` (chat), ``/console`` and its data, ``/static/<file>``.

The console (page and data) exists only when ``NEXO_CONSOLE_TOKEN`` is set; its
data endpoint requires ``Authorization: Bearer <that token>``.
"""

from __future__ import annotations

import hmac
import time

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from nexo.context import NexoApp, app_context
from nexo.platform import health
from nexo.platform.config import Settings
from nexo.platform.errors import ErrorCode, NotFound, Unauthorized
from nexo.transparency import service as log
from nexo.web import assets, checklist
from nexo.web.sampler import Sampler

bp = Blueprint("web")


def setup(app: NexoApp) -> None:
    app.ctx.assets = assets.load()
    app.blueprint(bp)

    @app.before_server_start
    async def start_sampler(app: NexoApp) -> None:
        app.ctx.console = None
        settings = app.ctx.settings
        if settings.console_token:
            app.ctx.console = Sampler(settings.witnesses, settings.witness_quorum)
            await app.ctx.console.sample()
            app.ctx.console.start()

    @app.before_server_stop
    async def stop_sampler(app: NexoApp) -> None:
        if app.ctx.console is not None:
            await app.ctx.console.stop()


@bp.get("/")
async def chat_page(request: Request) -> HTTPResponse:
    return assets.respond(request, app_context(request).assets, "index.html")


@bp.get("/static/<name:path>")
async def static_file(request: Request, name: str) -> HTTPResponse:
    return assets.respond(request, app_context(request).assets, name)


def _console(request: Request) -> Sampler:
    sampler: Sampler | None = app_context(request).console
    if sampler is None:
        raise NotFound("the console is off: set NEXO_CONSOLE_TOKEN to turn it on")
    return sampler


@bp.get("/console")
async def console_page(request: Request) -> HTTPResponse:
    _console(request)
    return assets.respond(request, app_context(request).assets, "console.html")


@bp.get("/api/console/status")
async def console_status(request: Request) -> HTTPResponse:
    """The checklist, the plot's points after ``since`` (unix seconds) and the latest registrations."""
    sampler = _console(request)
    settings: Settings = app_context(request).settings
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {settings.console_token}".encode()):
        raise Unauthorized("the console requires its bearer token (NEXO_CONSOLE_TOKEN)")
    try:
        since = float(request.args.get("since", "0"))
    except ValueError:
        since = 0.0
    history = list(sampler.history)
    if not history:
        error = {"code": ErrorCode.SERVICE_UNAVAILABLE.value, "message": sampler.error or "no sample yet"}
        return json({"error": error}, status=503, headers={"Cache-Control": "no-store"})
    # The STH row holds the log to its heartbeat (NEXO_STH_MAX_AGE) with health's grace, and
    # the quorum-cosigned STH to that plus a submission round (interval and request timeout).
    sth_max_age = settings.sth_max_age + health.STH_AGE_GRACE_SECONDS
    witness_max_age = sth_max_age + settings.witness_interval + log.witness_request_timeout()
    rows = checklist.evaluate(history, now_ms=int(time.time() * 1000), sth_max_age=sth_max_age,
                              window=settings.console_window, witness_max_age=witness_max_age)
    plot = checklist.series(history)
    latest = history[-1]
    return json({
        "sampled_at": latest.t,
        "sample_error": sampler.error,
        "rows": [row.as_json() for row in rows],
        "plot": {name: [p for p in points if p[0] > since] for name, points in plot.items()},
        "sth": {"index": latest.sth_index, "tree_size": latest.sth_tree_size,
                "timestamp_ms": latest.sth_timestamp_ms,
                "cosigned": {"index": latest.cosigned_index, "timestamp_ms": latest.cosigned_timestamp_ms,
                             "cosigners": list(latest.cosigners), "quorum": latest.witness_quorum,
                             "witnesses": latest.witnesses}},
        "registrations": sampler.registrations,
    }, headers={"Cache-Control": "no-store"})
