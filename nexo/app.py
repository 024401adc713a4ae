"""``create_app``: blueprints, listeners, middleware, error handler — nothing else."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from types import ModuleType, SimpleNamespace

from sanic import Request, Sanic
from sanic.config import Config
from sanic.response import BaseHTTPResponse

from nexo import db, errors, health, metrics, ratelimit
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
    "X-Frame-Options": "DENY",
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
        import os

        settings = Settings.from_env(dev=os.environ.get("NEXO_DEV") == "1")
    app: NexoApp = Sanic("nexo", ctx=SimpleNamespace(), configure_logging=True)
    app.ctx.settings = settings
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
    app.config.CORS_ORIGINS = ",".join(settings.cors_origins) if settings.cors_origins else ""
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


async def _start_request(request: Request) -> None:
    request.ctx.started = time.perf_counter()
    given = request.headers.get("x-request-id", "")
    request.ctx.request_id = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex


async def _finish_response(request: Request, response: BaseHTTPResponse) -> None:
    request_id = getattr(request.ctx, "request_id", None) or uuid.uuid4().hex
    response.headers["X-Request-ID"] = request_id
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.scheme in {"https", "wss"}:
        response.headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
    status = response.status
    metrics.observe(request, status)
    if access_log.isEnabledFor(logging.INFO):
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
