"""``create_app``: blueprints, listeners, middleware, error handler — nothing else."""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from types import ModuleType, SimpleNamespace

from sanic import Request, Sanic
from sanic.config import Config
from sanic.response import BaseHTTPResponse

from nexo import db, errors, health, logs, metrics, ratelimit
from nexo.auth import endpoints as auth_endpoints
from nexo.config import Settings
from nexo.devices import endpoints as devices_endpoints
from nexo.messages import endpoints as messages_endpoints
from nexo.realtime import ws as realtime_ws
from nexo.transparency import endpoints as transparency_endpoints

access_log = logging.getLogger("nexo.access")

#: Feature modules in start order. Each has ``setup(app)``; some have
#: ``async prepare(settings)`` run once before serving (``prepare_storage``).
FEATURES: list[ModuleType] = [
    health,
    ratelimit,
    auth_endpoints,
    transparency_endpoints,
    devices_endpoints,
    messages_endpoints,
    realtime_ws,
]

NexoApp = Sanic[Config, SimpleNamespace]

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
    await db.init_db(settings, create_schema=True)
    for feature in FEATURES:
        prepare: Callable[[Settings], Awaitable[None]] | None = getattr(feature, "prepare", None)
        if prepare is not None:
            await prepare(settings)


def create_app(settings: Settings | None = None) -> NexoApp:
    """Build the Sanic app. No I/O here: connections open in listeners."""
    if settings is None:
        settings = Settings.from_env(dev=os.environ.get("NEXO_DEV") == "1")
    logs.configure(settings.log_level, settings.access_log)
    app: NexoApp = Sanic("nexo", ctx=SimpleNamespace(), configure_logging=True)
    app.ctx.settings = settings
    app.ctx.response_headers = dict(SECURITY_HEADERS)
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
    app.config.CORS = bool(settings.cors_origins)
    app.config.CORS_ORIGINS = ",".join(settings.cors_origins)
    app.ext.openapi.describe(
        "Nexo",
        version=__import__("nexo").__version__,
        description="Accounts, a verifiable key transparency log and an exactly-once message relay.",
    )

    app.error_handler.add(Exception, errors.render)

    async def open_database(app: NexoApp) -> None:
        await db.init_db(app.ctx.settings, create_schema=False)

    async def close_database(app: NexoApp) -> None:
        await db.close_db()

    app.register_listener(open_database, "before_server_start", priority=1000)
    app.register_listener(close_database, "after_server_stop", priority=-1000)

    app.blueprint(metrics.bp)
    for feature in FEATURES:
        feature.setup(app)

    app.on_request(_start_request, priority=1000)
    app.on_response(_finish_response, priority=-1000)
    return app


# Request ids: a random per-process prefix and a counter (unique, and no syscall per request).
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)
_QUIET_PATHS = frozenset({"/api/health", "/metrics"})


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


async def _start_request(request: Request) -> None:
    request.ctx.started = time.perf_counter()
    given = request.headers.get("x-request-id", "")
    request.ctx.request_id = given if 0 < len(given) <= 128 and given.isprintable() else new_request_id()


async def _finish_response(request: Request, response: BaseHTTPResponse) -> None:
    request_id = getattr(request.ctx, "request_id", None) or new_request_id()
    headers = response.headers
    headers["X-Request-ID"] = request_id
    for name, value in request.app.ctx.response_headers.items():
        if name not in headers:
            headers[name] = value
    status = response.status
    metrics.observe(request, status)
    if access_log.isEnabledFor(logging.INFO) and (status >= 400 or request.path not in _QUIET_PATHS):
        started = getattr(request.ctx, "started", None)
        access_log.info(
            json.dumps(
                {
                    "request_id": request_id,
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 3) if started else None,
                    "client": request.remote_addr or request.ip,
                },
                separators=(",", ":"),
            )
        )
