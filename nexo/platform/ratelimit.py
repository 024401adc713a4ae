"""Rate limiting (docs/ratelimit.md).

Algorithm: a **moving window** (a log of hit timestamps per key): at most
``amount`` hits are counted in *any* interval of ``window_seconds``, so no
client gets 200 requests across a window boundary. A refused hit is not
recorded, so hammering does not extend a lockout.

Storage: in process by default (:class:`MemoryWindows`, synchronous and
O(1) amortised per hit: it sits on the path of every request and of every
WebSocket ``send`` burst); Redis when ``REDIS_URL`` is set (:class:`RedisWindows`:
the same log as a sorted set per key, one Lua script per hit, so the
check-and-record is atomic across every worker and instance sharing that Redis
and costs one round trip). Keys start with ``NEXO_REDIS_PREFIX``.
When Redis fails, the limiter keeps serving from per-process storage, logs an
error, counts ``nexo_ratelimit_storage_errors_total`` and retries Redis after
``REDIS_RETRY_SECONDS``.

The request middleware (:func:`limit_request`, installed by :func:`setup`) runs
before any handler, so a refused request has no side effect. Identity is the user
id of a valid access token, else the client address (``X-Forwarded-For`` only
with ``NEXO_TRUSTED_PROXIES`` > 0, RFC 7239 ``Forwarded`` only with
``NEXO_FORWARDED_SECRET``: Sanic's proxy settings).

One module of ~440 lines on purpose: the window algorithm, its two storages, the
limiter's Redis fallback and the middleware share :class:`Decision`, the buckets and the
headers; they are the one rule docs/ratelimit.md describes, read together.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from sanic import Request
from sanic.response import BaseHTTPResponse

from nexo.context import NexoApp, app_context
from nexo.platform.config import RateLimit, Settings
from nexo.platform.errors import TooManyRequests
from nexo.platform.metrics import route_label

log = logging.getLogger("nexo.ratelimit")

#: After a Redis failure, serve from process memory this long before trying Redis again.
REDIS_RETRY_SECONDS = 2.0
#: Redis socket timeouts (seconds). A timeout switches the worker to per-process counting,
#: which admits up to N more per worker, so it must mean "Redis is gone", not "this host
#: is loaded": the timer runs on the worker's own event loop, which a busy CPU delays, and
#: a Redis busy with another client's command answers late but exactly. A dead Redis
#: process refuses the connection at once; only a dead host or a hung Redis waits this long.
REDIS_CONNECT_TIMEOUT = 2.0
REDIS_SOCKET_TIMEOUT = 5.0

#: Paths never limited: probes, metrics, API docs, the WebSocket upgrade (``send``
#: frames have their own per-user budget, ``Bucket.WS_SEND``), the web pages and their
#: files (served from memory) and the token-protected console's data (polled).
EXEMPT_PATHS = frozenset({"/api/health", "/metrics", "/ws", "/", "/console", "/api/console/status"})
EXEMPT_PREFIXES = ("/docs", "/static/")
#: Anonymous auth endpoints: their own per-address budget (``NEXO_AUTH_RATE_LIMIT``).
AUTH_PATHS = frozenset({"/api/auth/register", "/api/auth/login", "/api/auth/refresh"})

REFUSED = Counter("nexo_ratelimit_refused_total", "Requests refused by the rate limiter", ["route", "bucket"])
STORAGE_ERRORS = Counter(
    "nexo_ratelimit_storage_errors_total", "Rate-limit storage (Redis) failures; served from process memory"
)
FALLBACK = Gauge(
    "nexo_ratelimit_fallback",
    "1 while a worker limits from process memory instead of Redis",
    multiprocess_mode="max",
)


class Bucket(StrEnum):
    """Separate budgets. Values appear in storage keys and metric labels."""

    API = "api"
    AUTH = "auth"
    WS_SEND = "ws_send"


class Decision(NamedTuple):
    """The outcome of one hit. Times are seconds from now.

    ``reset_after``: until at least one more request is allowed again (the
    oldest counted hit leaves the window), or the whole window when none is
    counted. ``retry_after``: 0 when allowed, else when to retry.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


def _decision(allowed: bool, rate: RateLimit, counted: int, reset_after: float) -> Decision:
    """A hit's outcome from what the window holds after it (memory and Redis alike)."""
    reset_after = max(0.0, reset_after)
    return Decision(
        allowed=allowed,
        limit=rate.amount,
        remaining=max(0, rate.amount - counted),
        reset_after=reset_after,
        retry_after=0.0 if allowed else max(reset_after, 0.001),
    )


class _TokenVerifier(Protocol):
    def verify_access(self, token: str) -> Any: ...


class _Log:
    """The counted hits of one key: times (oldest first), the cost of each, their sum."""

    __slots__ = ("costs", "times", "total")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.costs: deque[int] = deque()
        self.total = 0


class MemoryWindows:
    """Moving-window logs in process memory, one per (bucket, identity, rate).

    Pure and synchronous: ``clock`` is the only input besides the arguments.
    Idle logs are dropped by a sweep at most every :data:`SWEEP_SECONDS`.
    """

    SWEEP_SECONDS = 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[tuple[str, str, RateLimit], _Log] = {}
        self._next_sweep = clock() + self.SWEEP_SECONDS

    def __len__(self) -> int:
        return len(self._logs)

    def hit(self, bucket: str, identity: str, rate: RateLimit, cost: int = 1) -> Decision:
        """Count ``cost`` hits now if all fit in the window, else none."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        key = (bucket, identity, rate)
        entry = self._logs.get(key)
        if entry is None:
            entry = self._logs[key] = _Log()
        window = rate.window_seconds
        times, costs = entry.times, entry.costs
        horizon = now - window
        while times and times[0] <= horizon:
            times.popleft()
            entry.total -= costs.popleft()
        allowed = entry.total + cost <= rate.amount
        if allowed and cost > 0:
            times.append(now)
            costs.append(cost)
            entry.total += cost
        reset_after = times[0] + window - now if times else float(window)
        return _decision(allowed, rate, entry.total, reset_after)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_SECONDS
        idle = [
            key
            for key, entry in self._logs.items()
            if not entry.times or entry.times[-1] <= now - key[2].window_seconds
        ]
        for key in idle:
            del self._logs[key]


#: One moving-window hit in Redis, atomically: drop the hits that left the window, count
#: the rest, record ``cost`` more if they fit (all or none), keep the key as long as the
#: window. Times are Redis's own clock, so instances with skewed clocks agree.
#: Returns {allowed, hits counted, seconds until the oldest counted hit leaves}.
_MOVING_WINDOW_LUA = """
local key = KEYS[1]
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if count + cost <= limit then
  for i = 1, cost do
    redis.call('ZADD', key, now, string.format('%.6f:%d', now, count + i))
  end
  count = count + cost
  allowed = 1
end
local reset = window
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
  redis.call('PEXPIRE', key, math.ceil(window * 1000))
end
return {allowed, count, tostring(reset)}
"""


class RedisWindows:
    """The moving-window log in Redis (a sorted set per key), one round trip per hit."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.prefix = f"{prefix}:ratelimit"
        self.client = Redis.from_url(
            redis_url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
        )
        self._script = self.client.register_script(_MOVING_WINDOW_LUA)

    async def hit(self, bucket: str, identity: str, rate: RateLimit, cost: int = 1) -> Decision:
        key = f"{self.prefix}:{bucket}:{rate.amount}/{rate.window_seconds}:{identity}"
        allowed, count, reset = await self._script(keys=[key], args=[rate.window_seconds, rate.amount, cost])
        return _decision(bool(allowed), rate, int(count), float(reset))

    async def check(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()


class Limiter:
    """Moving-window limiter over Redis (shared) or process memory."""

    def __init__(self, redis_url: str | None = None, prefix: str = "nexo") -> None:
        self._memory = MemoryWindows()
        self._redis = RedisWindows(redis_url, prefix) if redis_url else None
        self._retry_redis_at = 0.0
        self._failing = False

    @property
    def backend(self) -> str:
        """``redis``, ``memory``, or ``memory (redis unreachable)``."""
        if self._redis is None:
            return "memory"
        return "memory (redis unreachable)" if self._failing else "redis"

    async def hit(self, bucket: str, identity: str, rate: RateLimit, cost: int = 1) -> Decision:
        """Count ``cost`` hits of ``identity`` in ``bucket`` at ``rate`` (all or none); never raises."""
        redis = self._redis_now()
        if redis is not None:
            try:
                decision = await redis.hit(bucket, identity, rate, cost)
            except Exception as exc:  # any storage failure: keep serving from memory
                self._redis_failed(exc)
            else:
                if self._failing:
                    self._failing = False
                    FALLBACK.set(0)
                    log.warning("rate limiting: Redis answers again; limits are shared again")
                return decision
        return self._memory.hit(bucket, identity, rate, cost)

    def hit_now(self, bucket: str, identity: str, rate: RateLimit, cost: int = 1) -> Decision | None:
        """:meth:`hit` without waiting when the limits are in process memory; ``None`` when
        Redis must be asked (then call :meth:`hit`)."""
        if self._redis_now() is not None:
            return None
        return self._memory.hit(bucket, identity, rate, cost)

    def _redis_now(self) -> RedisWindows | None:
        """The Redis limiter, unless none is configured or it is in its back-off after a failure."""
        if self._redis is not None and time.monotonic() >= self._retry_redis_at:
            return self._redis
        return None

    def _redis_failed(self, exc: Exception) -> None:
        STORAGE_ERRORS.inc()
        self._retry_redis_at = time.monotonic() + REDIS_RETRY_SECONDS
        if not self._failing:
            self._failing = True
            FALLBACK.set(1)
            log.error("rate limiting: Redis is unreachable (%r); limiting per process until it answers", exc)

    async def check_redis(self) -> bool:
        """True when Redis answers (or none is configured)."""
        if self._redis is None:
            return True
        try:
            return await self._redis.check()
        except Exception:
            return False

    async def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.close()


def rate_limit_headers(bucket: str, rate: RateLimit, decision: Decision) -> dict[str, str]:
    """``RateLimit-Policy``/``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-10) and ``X-RateLimit-*``.

    All reset values are delta seconds, rounded up.
    """
    reset = math.ceil(decision.reset_after)
    return {
        "RateLimit-Policy": f'"{bucket}";q={rate.amount};w={rate.window_seconds}',
        "RateLimit": f'"{bucket}";r={decision.remaining};t={reset}',
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(reset),
    }


def client_address(request: Request) -> str:
    """The client address: the trusted proxy's view when configured, else the peer."""
    return request.remote_addr or request.ip or "unknown"


def _token_user(request: Request) -> int | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    tokens: _TokenVerifier | None = getattr(request.app.ctx, "tokens", None)
    if tokens is None:
        return None
    try:
        claims = tokens.verify_access(token.strip())
    except Exception:  # an invalid token is limited by address; the handler answers 401
        return None
    # The auth guard reuses the verified claims instead of decoding the JWT again.
    request.ctx.access_claims = claims
    return int(claims.user_id)


def budget_path(request: Request) -> str:
    """The path that decides the budget: the matched route's pattern, not the raw path.

    Sanic answers ``/api/auth/login/`` (and any other spelling its router maps there)
    with the login handler, so the budget must follow the route, or a trailing slash
    would move login attempts to the larger API budget. An unmatched request keeps
    its raw path.
    """
    route = request.route
    return request.path if route is None else "/" + route.path.lstrip("/")


def classify(request: Request, settings: Settings) -> tuple[Bucket, str, RateLimit] | None:
    """Which budget a request spends, and whose; ``None`` when exempt."""
    path = budget_path(request)
    if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES) or request.method == "OPTIONS":
        return None
    if path in AUTH_PATHS:
        return Bucket.AUTH, f"ip:{client_address(request)}", settings.auth_rate_limit
    user_id = _token_user(request)
    identity = f"user:{user_id}" if user_id is not None else f"ip:{client_address(request)}"
    return Bucket.API, identity, settings.rate_limit


async def limit_request(request: Request) -> None:
    """Request middleware: spend one unit of the caller's budget or refuse with 429.

    A route declared with ``ctx_charged_by_handler=True`` is skipped here: its handler
    calls :func:`charge` itself before any costly work, and not for what it answers
    from memory (the tlog-tiles route: full tiles a worker holds).
    """
    route = request.route
    if route is not None and getattr(route.ctx, "charged_by_handler", False):
        return
    await charge(request)


async def charge(request: Request) -> None:
    """Spend one unit of the caller's budget (the budget the middleware would) or refuse with 429."""
    settings: Settings = app_context(request).settings
    target = classify(request, settings)
    if target is None:
        return
    bucket, identity, rate = target
    decision = await app_context(request).limiter.hit(bucket, identity, rate)
    headers = rate_limit_headers(bucket, rate, decision)
    request.ctx.rate_limit_headers = headers
    if not decision.allowed:
        REFUSED.labels(route_label(request), bucket).inc()
        raise TooManyRequests(
            f"rate limit of {rate} exceeded; retry after the Retry-After delay",
            retry_after=decision.retry_after,
            headers=headers,
        )


async def add_headers(request: Request, response: BaseHTTPResponse) -> None:
    headers: dict[str, str] | None = getattr(request.ctx, "rate_limit_headers", None)
    if headers:
        for name, value in headers.items():
            response.headers.setdefault(name, value)


async def prepare(settings: Settings) -> None:
    """Once, in the main process: say loudly when limits cannot be shared."""
    if settings.redis_url is None:
        if settings.workers > 1:
            log.warning(
                "\n%s\nRATE LIMITS ARE PER PROCESS: %d workers and no REDIS_URL, so each worker counts "
                "on its own and a client gets up to %d x %s. Set REDIS_URL to share the limits.\n%s",
                "!" * 78,
                settings.workers,
                settings.workers,
                settings.rate_limit,
                "!" * 78,
            )
        return
    limiter = Limiter(settings.redis_url, settings.redis_prefix)
    try:
        if not await limiter.check_redis():
            log.error(
                "rate limiting: Redis at REDIS_URL does not answer; serving with per-process limits "
                "until it does"
            )
    finally:
        await limiter.close()


def setup(app: NexoApp) -> None:
    """Install the limiter (``app.ctx.limiter``) and its middleware."""

    @app.before_server_start
    async def open_limiter(app: NexoApp) -> None:
        settings: Settings = app.ctx.settings
        app.ctx.limiter = Limiter(settings.redis_url, settings.redis_prefix)

    @app.after_server_stop
    async def close_limiter(app: NexoApp) -> None:
        await app.ctx.limiter.close()

    # After request-id assignment (priority 1000), before every feature's work.
    app.on_request(limit_request, priority=900)
    app.on_response(add_headers, priority=900)
