"""Every log line is one line of printable text (issue 14, finding 7; nexo/platform/logs.py)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from nexo.platform import logs

FORGED = "2031-01-01 00:00:00,000 CRITICAL nexo.auth [1] forged"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    logs.configure("INFO")
    handler = next(h for h in logging.getLogger("nexo").handlers if getattr(h, "_nexo", False))
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


@pytest.mark.parametrize("separator", ["\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\x1b[2K\r", "\x00"])
def test_a_message_argument_cannot_start_a_line(captured: io.StringIO, separator: str) -> None:
    logging.getLogger("nexo.auth").warning("failed login username=%s reason=%s", f"x{separator}{FORGED}", "x")
    text = captured.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
    assert "forged" in text and not any(c in text[:-1] for c in "\r\n\u2028\u2029\x85\x1b\x00")


def test_a_traceback_is_indented_and_escaped(captured: io.StringIO) -> None:
    try:
        raise ValueError(f"bad input\n{FORGED}")
    except ValueError:
        logging.getLogger("nexo.db").exception("query failed for %s", "user\nname")
    lines = captured.getvalue().splitlines()
    assert lines[0].endswith("query failed for user\\nname")
    assert all(line.startswith("  | ") for line in lines[1:]), lines
    assert not any(line.startswith("2031") for line in lines)


def test_escape_control_names_every_control_character() -> None:
    assert logs.escape_control("a\nb\r\tc\x1b\x7f\x9f\u2028é") == "a\\nb\\r\\tc\\x1b\\x7f\\x9f\\u2028é"


def test_the_filter_adds_no_attribute_to_the_record() -> None:
    """Sanic's debug formatter prints a record's extra attributes as ``name=value`` lines."""
    record = logging.LogRecord("sanic.root", logging.INFO, __file__, 1, "a\nb %s", ("c",), None)
    before = set(vars(record))
    logs.EscapeControl().filter(record)
    assert set(vars(record)) == before
    assert record.getMessage() == "a\\nb c"
    logs.EscapeControl().filter(record)  # a second pass changes nothing
    assert record.getMessage() == "a\\nb c"
