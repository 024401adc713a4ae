"""Logging: human-readable lines on stderr, one JSON object per line for access logs.

``NEXO_LOG_LEVEL`` (default INFO) sets the level of the ``nexo`` loggers.
The access log writes one JSON object per request, in the same line layout
as every other log line (``<time> INFO nexo.access [<pid>] {...}``);
successful health and metrics probes are left out so load balancers do not
drown the log. ``NEXO_ACCESS_LOG=0`` turns it off.

The access log does not go through :mod:`logging`: a log record, a formatter
pass and a write per request cost a sixth of a worker's CPU under load.
:class:`AccessLog` formats the line itself and writes whatever one turn of the
event loop produced in one call, at the end of that turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any, TextIO

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
    ACCESS.enabled = access_log


class AccessLog:
    """Buffered JSON access lines: at most one write per event-loop turn.

    ``stream`` is looked up at write time (``sys.stderr`` by default), so a
    redirected stderr is honoured. Lines written outside a running loop are
    written at once.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.enabled = True
        self._stream = stream
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self._prefix_tail = ""
        self.after_fork()

    def write(self, entry: dict[str, Any]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second; logging's asctime layout
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = (
            f"{self._stamp},{int((now - second) * 1000):03d}{self._prefix_tail}"
            f"{json.dumps(entry, separators=(',', ':'))}\n"
        )
        self._lines.append(line)
        if len(self._lines) == 1:  # the first line of this turn schedules the write
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no running loop: write now
                self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail a request
            pass

    def after_fork(self) -> None:
        """Take this process's pid (at creation, and again in a forked worker)."""
        self._prefix_tail = f" INFO nexo.access [{os.getpid()}] "


#: The process's access log (``NEXO_ACCESS_LOG`` turns it on or off).
ACCESS = AccessLog()
os.register_at_fork(after_in_child=ACCESS.after_fork)
