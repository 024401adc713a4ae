"""Infrastructure every feature may use and that uses no feature.

The database and its SQL helpers (``db``, ``wal``, ``counters``, ``ids``), settings
(``config``, ``tls``), logging, metrics, rate limits and health (``logs``, ``metrics``,
``ratelimit``, ``health``), errors and request validation (``errors``, ``validation``,
``text``), HTTP caching (``httpcache``), background tasks and time (``tasks``,
``timefmt``), the worker's tuning and Sanic patches (``gcpolicy``, ``speedups``),
file modes (``filemodes``), the CLI's console output (``console``) and the batching
queue every group-commit writer uses (``batching``).
docs/architecture.md says what may import what; ``lint-imports`` checks it.
"""
