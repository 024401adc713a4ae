"""A tile's HTTP representations, built once: bytes, headers, ETag, and gzip for entry bundles.

Every tile (hash tile or entry bundle) carries a strong ``ETag`` (its body's
SHA-256), so a reader or cache revalidates with ``If-None-Match`` and gets a
bodyless 304. Entry bundles are gzipped for clients whose ``Accept-Encoding``
allows it (C2SP tlog-tiles: "Entry bundles SHOULD be compressed at the HTTP
layer"), with ``Vary: Accept-Encoding`` and an ETag of their own, so a shared
cache keeps both codings apart; hash tiles (random hashes) are not compressible
and are always sent as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from sanic import Request
from sanic.response import HTTPResponse

from nexo.platform import httpcache
from nexo.transparency.tiles import TileId

IMMUTABLE = "public, max-age=31536000, immutable"
OCTETS = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Representation:
    body: bytes
    etag: str
    #: Everything but ``Content-Type``/``Content-Length``, as sent (ETag included).
    headers: dict[str, str]
    #: What a 304 repeats (RFC 9110 §15.4.5): the headers without ``Content-Encoding``.
    unchanged: dict[str, str]


@dataclass(frozen=True, slots=True)
class TileResponse:
    """A tile as served: its plain body and, for entry bundles, the gzipped one."""

    plain: Representation
    gzipped: Representation | None

    @property
    def nbytes(self) -> int:
        """Memory the bodies hold."""
        return len(self.plain.body) + (len(self.gzipped.body) if self.gzipped else 0)

    def respond(self, request: Request) -> HTTPResponse:
        """200 with the coding the client accepts, or 304 when its copy is current."""
        chosen = self.plain
        if self.gzipped is not None and httpcache.accepts_gzip(request.headers.get("accept-encoding", "")):
            chosen = self.gzipped
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and httpcache.none_match(if_none_match, chosen.etag):
            return HTTPResponse(status=304, headers=chosen.unchanged)
        return HTTPResponse(chosen.body, headers=chosen.headers, content_type=OCTETS)


def build(tile: TileId, body: bytes) -> TileResponse:
    """The representations of ``tile`` with ``body``."""
    etag = httpcache.strong_etag(body)
    if tile.level is not None:  # a hash tile: one coding, no Vary
        headers = {"Cache-Control": IMMUTABLE, "ETag": etag}
        return TileResponse(Representation(body, etag, headers, headers), None)
    plain = {"Cache-Control": IMMUTABLE, "Vary": "Accept-Encoding", "ETag": etag}
    gzip_etag = etag[:-1] + '-gzip"'
    packed = {**plain, "ETag": gzip_etag}
    return TileResponse(
        Representation(body, etag, plain, plain),
        Representation(httpcache.gzip_body(body), gzip_etag, {**packed, "Content-Encoding": "gzip"}, packed),
    )
