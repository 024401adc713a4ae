"""Logging: human-readable lines on stderr, one JSON object per line for access logs.

``NEXO_LOG_LEVEL`` (default INFO) sets the level of the ``nexo`` loggers.

A log line never holds a raw control character: messages go through
:class:`EscapeControl` (a newline is written as backslash-n, other C0/C1 characters
as backslash-xNN), so a username with a newline cannot forge a monitoring line; the
lines of a traceback are indented and escaped the same way, so no line but a
record's first starts at column 0. The access log is JSON, escaped by ``json.dumps``.

The access log does not go through :mod:`logging`: a log record, a formatter
pass and a write per request cost a sixth of a worker's CPU under load.
:class:`AccessLog` formats the line itself and writes whatever one turn of the
event loop produced in one call, at the end of that turn.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

from nexo.platform.batching import EndOfTurn

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"

#: C0 controls, DEL and C1 controls, plus the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: Loggers outside ``nexo`` whose records also get :class:`EscapeControl` (Sanic's own).
OTHER_LOGGERS = ("sanic.root", "sanic.error", "sanic.server", "sanic.websockets", "sanic.access")


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (one line, printable)."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class EscapeControl(logging.Filter):
    """Render the record's message with its control characters escaped."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Only a message that holds a control character is rewritten (so a second pass
        # finds nothing to do); no attribute is added, since Sanic's debug formatter
        # prints a record's extra attributes.
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg = escape_control(message)
            record.args = None
        return True


class EscapingFormatter(logging.Formatter):
    """Traceback and stack lines indented and escaped: only a record's own first line
    starts at column 0, so no text inside an exception can pose as a record."""

    def formatException(self, ei: Any) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("  | " + escape_control(line) for line in text.splitlines())


def configure(level: str = "INFO", access_log: bool = True) -> None:
    """Idempotent: attach one stderr handler to the ``nexo`` logger tree."""
    root = logging.getLogger("nexo")
    if not any(getattr(h, "_nexo", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapingFormatter(_FORMAT))
        handler.addFilter(EscapeControl())
        handler._nexo = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    for name in OTHER_LOGGERS:
        other = logging.getLogger(name)
        if not any(isinstance(f, EscapeControl) for f in other.filters):
            other.addFilter(EscapeControl())
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
        self._turn: EndOfTurn[str] = EndOfTurn(self._write_lines, name="nexo-access-log")
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
        self._turn.add(line)

    def flush(self) -> None:
        """Write the lines not written yet (at shutdown)."""
        self._turn.flush_now()

    def _write_lines(self, lines: list[str]) -> None:
        stream = self._stream or sys.stderr
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail a request
            pass

    def after_fork(self) -> None:
        """Take this process's pid (at creation, and again in a forked worker)."""
        self._prefix_tail = f" INFO nexo.access [{os.getpid()}] "


#: The process's access log (``NEXO_ACCESS_LOG`` turns it on or off).
ACCESS = AccessLog()
os.register_at_fork(after_in_child=ACCESS.after_fork)
