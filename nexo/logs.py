"""Logging: human-readable lines on stderr, one JSON object per line for access logs.

``NEXO_LOG_LEVEL`` (default INFO) sets the level of the ``nexo`` loggers.
The access log (logger ``nexo.access``) writes one JSON object per request;
successful health and metrics probes are left out so load balancers do not
drown the log. ``NEXO_ACCESS_LOG=0`` turns it off.
"""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure(level: str = "INFO", access_log: bool = True) -> None:
    """Idempotent: attach one stderr handler to the ``nexo`` logger tree."""
    root = logging.getLogger("nexo")
    if not any(getattr(h, "_nexo", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._nexo = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())
    logging.getLogger("nexo.access").setLevel(logging.INFO if access_log else logging.WARNING)
