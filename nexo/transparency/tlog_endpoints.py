"""The C2SP tlog-tiles read API under ``/tlog/`` (https://c2sp.org/tlog-tiles).

``/tlog/checkpoint`` is the same note as ``/api/log/checkpoint`` (cached a
second); ``/tlog/tile/<L>/<N>[.p/<W>]`` and ``/tlog/tile/entries/<N>[.p/<W>]``
are immutable once served (a tile of a given width never changes), so a CDN
may keep them for a year; they carry an ETag (``If-None-Match`` → 304) and entry
bundles are gzipped for clients that accept it. Full tiles a worker holds are
answered from memory without spending the rate limit; a miss spends it before
any database read. Wire details: docs/transparency.md.
"""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, text
from sanic_ext import openapi

from nexo.context import app_context
from nexo.platform import ratelimit
from nexo.platform.errors import NotFound
from nexo.transparency import service, tiles, tiles_service
from nexo.transparency.tile_responses import OCTETS

bp = Blueprint("tlog", url_prefix="/tlog")

CHECKPOINT_CACHE = {"Cache-Control": "public, max-age=1"}


@bp.get("/checkpoint")
@openapi.summary("The checkpoint (C2SP signed note) of the tlog-tiles API")
@openapi.response(200, {"text/plain": str})
async def tlog_checkpoint(request: Request) -> HTTPResponse:
    settings = app_context(request).settings
    note, headers = await service.served_checkpoint(
        app_context(request).log_public_key, settings.witnesses, settings.witness_quorum
    )
    return text(note, headers={**CHECKPOINT_CACHE, **headers}, content_type="text/plain; charset=utf-8")


@bp.get("/tile/<path:path>", ctx_charged_by_handler=True)
@openapi.summary("A hash tile <L>/<N>[.p/<W>] or an entry bundle entries/<N>[.p/<W>]")
@openapi.response(200, {OCTETS: bytes})
@openapi.response(304, description="the If-None-Match ETag is current")
async def tlog_tile(request: Request, path: str) -> HTTPResponse:
    """A full tile this worker holds is answered from memory, uncharged; anything else
    (a miss, a partial tile, a bad path) spends a unit of the rate limit first."""
    found = tiles_service.cached(path)
    if found is None:
        await ratelimit.charge(request)
        try:
            tile = tiles.parse_path(path)
        except tiles.TilePathError as exc:
            raise NotFound(f"not a tile path: {exc}", code=service.LogErrorCode.TILE_NOT_FOUND) from None
        found = await tiles_service.tile_response(tile)
    return found.respond(request)
