"""``create_app``: blueprints, listeners, middleware, error handler — nothing else."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from typing import Any

from sanic import Request, Sanic
from sanic.response import BaseHTTPResponse

from nexo.auth import endpoints as auth_endpoints
from nexo.context import AppContext, NexoApp, app_context
from nexo.devices import endpoints as devices_endpoints
from nexo.devices import service as devices_service
from nexo.messages import endpoints as messages_endpoints
from nexo.platform import db, errors, filemodes, gcpolicy, health, logs, metrics, ratelimit, speedups
from nexo.platform.config import Settings
from nexo.platform.wal import WalBackfiller, WriterConnection
from nexo.realtime import ws as realtime_ws
from nexo.realtime.hub import on_commit
from nexo.realtime.sessions import ENDED
from nexo.transparency import endpoints as transparency_endpoints
from nexo.web import endpoints as web_endpoints

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


async def prepare_storage(settings: Settings) -> None:
    """Create or migrate the schema and run every feature's one-time preparation.

    Run once per start in the main process (before workers fork) and by
    ``nexo db push``; leaves the database connection open.
    """
    filemodes.tighten(settings.data_dir, (settings.signing_key_path,))
    await db.init_db(settings, create_schema=True)
    await ratelimit.prepare(settings)
    await transparency_endpoints.prepare(settings)


def create_app(settings: Settings | None = None) -> NexoApp:
    """Build the Sanic app. No I/O here: connections open in listeners."""
    if settings is None:
        settings = Settings.from_env(dev=os.environ.get("NEXO_DEV") == "1")
    logs.configure(settings.log_level, settings.access_log)
    speedups.install()
    ctx = AppContext(settings=settings, response_headers=dict(SECURITY_HEADERS))
    app: NexoApp = Sanic("nexo", ctx=ctx, configure_logging=True, request_class=NexoRequest)
    if settings.tls:
        app.ctx.response_headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.WEBSOCKET_MAX_SIZE = settings.ws_max_frame_bytes
    app.config.WEBSOCKET_PING_INTERVAL = 20
    app.config.WEBSOCKET_PING_TIMEOUT = 20
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.OAS_UI_DEFAULT = "swagger"
    app.config.OAS_UI_REDOC = False
    app.config.PROXIES_COUNT = settings.trusted_proxies  # X-Forwarded-For/-Proto only when > 0
    app.config.FORWARDED_SECRET = settings.forwarded_secret  # RFC 7239 Forwarded only with a secret
    app.config.CORS = bool(settings.cors_origins)
    app.config.CORS_ORIGINS = ",".join(settings.cors_origins)
    app.ext.openapi.describe(
        "Nexo",
        version=__import__("nexo").__version__,
        description="Accounts, a verifiable key transparency log and an exactly-once message relay.",
    )

    app.error_handler.add(Exception, errors.render)

    async def open_database(app: NexoApp) -> None:
        settings = app.ctx.settings
        await db.init_db(settings, create_schema=False)
        app.ctx.wal_backfiller = None
        db.open_quick_reader(settings)
        if settings.database_kind == "sqlite":
            # Checkpoints move to their own thread (nexo/platform/wal.py), off the commits.
            await db.connection().execute_script("PRAGMA wal_autocheckpoint = 0")
            writer = WriterConnection(asyncio.get_running_loop(), db.backfill_wal)
            app.ctx.wal_backfiller = WalBackfiller(settings.sqlite_path, restart_via=writer)
            app.ctx.wal_backfiller.start()

    async def close_database(app: NexoApp) -> None:
        db.close_quick_reader()
        await db.close_db()
        if app.ctx.wal_backfiller is not None:
            app.ctx.wal_backfiller.stop()

    app.register_listener(open_database, "before_server_start", priority=1000)
    app.register_listener(close_database, "after_server_stop", priority=-1000)
    app.register_listener(_tune_gc, "after_server_start", priority=-1000)
    app.register_listener(_flush_access_log, "after_server_stop", priority=-1001)

    app.blueprint(metrics.bp)
    # Each setup registers its feature's start-up listener; they run in this order
    # (each may use what the ones before it put in app.ctx: nexo/context.py).
    health.setup(app)
    ratelimit.setup(app)
    auth_endpoints.setup(app)
    transparency_endpoints.setup(app)
    devices_endpoints.setup(app)
    messages_endpoints.setup(app)
    realtime_ws.setup(app)
    web_endpoints.setup(app)
    # After every feature's own start-up listener (same priority, registered last).
    app.register_listener(_link_features, "before_server_start")

    app.on_response(_finish_response, priority=-1000)
    return app


async def _link_features(app: NexoApp) -> None:
    """Every link between features, in one place: who is told what, and by whom.

    Runs before the server accepts anything, so nothing happens that a link could miss.
    """
    ctx = app.ctx
    auth, hub, recipients, sequencer = ctx.auth, ctx.hub, ctx.recipients, ctx.sequencer

    async def revoke_devices(user_id: int, username: str) -> None:
        await devices_service.revoke_all(sequencer, user_id, username)

    async def forget_recipient(user_id: int, username: str) -> None:
        recipients.forget(user_id)
        ctx.broker.publish_deleted(user_id)

    # DELETE /api/me: devices are revoked before the user row goes, and again after it (a
    # registration claimed just before the deletion is committed by then); then the names
    # cached for the user are forgotten here and in every other process.
    auth.deleting_hooks.append(revoke_devices)
    auth.deleted_hooks.extend([revoke_devices, forget_recipient])
    # Sessions ended through this process: their WebSockets here close at once.
    auth.session_listeners.append(lambda user_id, session_id: hub.end_sessions(user_id, session_id, ENDED))
    # Each committed batch of messages is pushed here and signalled to other processes.
    ctx.message_writer.listeners.append(on_commit(hub, ctx.broker.publish))
    # Another process deleted an account: forget the names cached for it.
    ctx.broker.on_user_deleted = recipients.forget


async def _tune_gc(app: NexoApp) -> None:
    """Last of the start-up listeners: what exists now lives as long as the worker."""
    gcpolicy.tune()


async def _flush_access_log(app: NexoApp) -> None:
    logs.ACCESS.flush()


class NexoRequest(Request):
    """A request that knows when it started and its id, without a middleware pass.

    ``request_id`` is the client's ``X-Request-ID`` when it is short and printable,
    else a random per-process prefix and a counter (unique, no syscall per request).
    """

    __slots__ = ("_request_id", "started")
    _id_prefix = secrets.token_hex(6)
    _id_counter = itertools.count(1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.perf_counter()
        self._request_id: str | None = None

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            given = self.headers.get("x-request-id", "")
            if 0 < len(given) <= 128 and given.isprintable():
                self._request_id = given
            else:
                self._request_id = f"{self._id_prefix}{next(self._id_counter):08x}"
        return self._request_id


_QUIET_PATHS = frozenset({"/api/health", "/metrics"})
_DOCS_PREFIX = "/docs"


async def _finish_response(request: NexoRequest, response: BaseHTTPResponse) -> None:
    request_id = request.request_id
    headers = response.headers
    headers["X-Request-ID"] = request_id
    if not request.path.startswith(_DOCS_PREFIX):  # the OpenAPI UI needs its scripts
        page_csp = headers.get("content-security-policy")  # web pages set their own (nexo.web.assets)
        headers.update(app_context(request).response_headers)
        if page_csp is not None:
            headers["content-security-policy"] = page_csp
    status = response.status
    metrics.observe(request, status)
    if logs.ACCESS.enabled and (status >= 400 or request.path not in _QUIET_PATHS):
        logs.ACCESS.write(
            {
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "status": status,
                "ms": round((time.perf_counter() - request.started) * 1000, 3),
                "client": request.remote_addr or request.ip,
            }
        )
