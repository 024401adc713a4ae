"""nexo.platform.httpcache: Accept-Encoding and If-None-Match as RFC 9110 reads them."""

from __future__ import annotations

import gzip

import pytest

from nexo.platform import httpcache


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.8", True),
        ("x-gzip", True),
        ("*", True),
        ("identity;q=1, *;q=0.1", True),
        ("", False),
        ("identity", False),
        ("br, deflate", False),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("*;q=0", False),
        ("gzip;q=0, *", False),  # listed codings win over *
        ("gzip;q=nonsense", False),
    ],
)
def test_accepts_gzip(header: str, gzip_ok: bool) -> None:
    assert httpcache.accepts_gzip(header) is gzip_ok
    assert httpcache.accepts_gzip(header) is gzip_ok  # the remembered answer is the same


def test_accepts_gzip_remembers_a_bounded_number_of_headers() -> None:
    for n in range(httpcache.MEMO_SIZE * 3):
        assert httpcache.accepts_gzip(f"gzip;q=0.{n + 1}") is True
        assert httpcache.accepts_gzip(f"br;q=0.{n + 1}") is False


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        (' "x" ,W/"abc" ', True),
        ("*", True),
        ('"abcd"', False),
        ('"x"', False),
        ("abc", False),
        ("", False),
    ],
)
def test_none_match(header: str, matches: bool) -> None:
    assert httpcache.none_match(header, '"abc"') is matches


def test_strong_etag_and_gzip_body_are_reproducible() -> None:
    body = b"entries " * 1000
    assert httpcache.strong_etag(body) == httpcache.strong_etag(bytes(body))
    assert httpcache.strong_etag(body) != httpcache.strong_etag(body + b"!")
    assert len(httpcache.strong_etag(body)) == 34
    packed = httpcache.gzip_body(body)
    assert packed == httpcache.gzip_body(body)  # no timestamp: one URL, one byte string
    assert gzip.decompress(packed) == body
