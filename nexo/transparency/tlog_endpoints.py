"""The C2SP tlog-tiles read API under ``/tlog/`` (https://c2sp.org/tlog-tiles).

``/tlog/checkpoint`` is the same note as ``/api/log/checkpoint`` (cached a
second); ``/tlog/tile/<L>/<N>[.p/<W>]`` and ``/tlog/tile/entries/<N>[.p/<W>]``
are immutable once served (a tile of a given width never changes), so a CDN
may keep them for a year. Wire details: docs/transparency.md.
"""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw, text
from sanic_ext import openapi

from nexo.context import app_context
from nexo.errors import NotFound
from nexo.transparency import service, tiles, tiles_service

bp = Blueprint("tlog", url_prefix="/tlog")

IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
CHECKPOINT_CACHE = {"Cache-Control": "public, max-age=1"}
OCTETS = "application/octet-stream"


@bp.get("/checkpoint")
@openapi.summary("The checkpoint (C2SP signed note) of the tlog-tiles API")
@openapi.response(200, {"text/plain": str})
async def tlog_checkpoint(request: Request) -> HTTPResponse:
    settings = app_context(request).settings
    note, headers = await service.served_checkpoint(
        app_context(request).log_public_key, settings.witnesses, settings.witness_quorum
    )
    return text(note, headers={**CHECKPOINT_CACHE, **headers}, content_type="text/plain; charset=utf-8")


@bp.get("/tile/<path:path>")
@openapi.summary("A hash tile <L>/<N>[.p/<W>] or an entry bundle entries/<N>[.p/<W>]")
@openapi.response(200, {OCTETS: bytes})
async def tlog_tile(request: Request, path: str) -> HTTPResponse:
    try:
        tile = tiles.parse_path(path)
    except tiles.TilePathError as exc:
        raise NotFound(f"not a tile path: {exc}", code=service.LogErrorCode.TILE_NOT_FOUND) from None
    body = await tiles_service.tile_body(tile)
    return raw(body, headers=IMMUTABLE, content_type=OCTETS)
