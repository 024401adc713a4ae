"""nexo.platform.speedups: the same results as the Sanic code they replace."""

from __future__ import annotations

import itertools

from sanic.response import json
from sanic.response.types import BaseHTTPResponse

from nexo.platform import speedups

SAMPLES = [
    "",
    "application/json",
    "default-src 'none'; frame-ancestors 'none'",
    "évidemment ✓",
    "a\r\nSet-Cookie: x=1",
    "\x00",
    "\r\r\n\n",
    "tab\tstays",
]


def test_same_result_as_sanic_on_every_interesting_string() -> None:
    alphabet = ["a", "\r", "\n", "\x00", "\t", " ", "é", "\x7f"]
    generated = ["".join(p) for n in range(4) for p in itertools.product(alphabet, repeat=n)]
    for value in SAMPLES + generated:
        assert speedups.sanitize_header_value(value) == speedups.original_sanitize_header_value(value), repr(
            value
        )


def test_installed_responses_still_strip_header_injection() -> None:
    speedups.install()
    assert BaseHTTPResponse._sanitize_header_value is speedups.sanitize_header_value
    response = json({}, headers={"X-Test": "ok\r\nSet-Cookie: evil=1", "X-Plain": "fine"})
    headers = dict(response.processed_headers)
    assert headers[b"X-Test"] == b"okSet-Cookie: evil=1"
    assert headers[b"X-Plain"] == b"fine"
