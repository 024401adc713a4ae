"""Prometheus metrics: HTTP traffic here; features declare their own beside their code.

``GET /metrics`` serves the text exposition format. When ``NEXO_METRICS_TOKEN``
is set, it requires ``Authorization: Bearer <that token>``.

With several workers, ``nexo serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before the workers start, and every worker answers with the
sum over all workers (prometheus-client's multiprocess mode), so a scrape
never sees one worker's share only.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw

from nexo.context import app_context
from nexo.platform.errors import Unauthorized

HTTP_REQUESTS = Counter("nexo_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "nexo_http_request_duration_seconds",
    "Time from request to response",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5),
)

bp = Blueprint("metrics")


def route_label(request: Request) -> str:
    """The route pattern, not the raw path, so labels stay bounded."""
    route = request.route
    if route is None:
        return "unmatched"
    return "/" + route.path.lstrip("/")


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe(request: Request, status: int) -> None:
    """Count the request and its latency (``request.started`` is set by the request class)."""
    method = request.method if request.method in _METHODS else "OTHER"
    key = (method, route_label(request), status)
    children = _children.get(key)
    if children is None:  # labels() takes a lock; cache the children per label set
        children = (HTTP_REQUESTS.labels(key[0], key[1], str(status)), HTTP_LATENCY.labels(key[0], key[1]))
        _children[key] = children
    children[0].inc()
    started = getattr(request, "started", None)
    if started is not None:
        children[1].observe(time.perf_counter() - started)


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    token = app_context(request).settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("metrics require the configured bearer token")
    return raw(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


def registry() -> CollectorRegistry:
    """The registry to read: this process, or the sum over workers in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
