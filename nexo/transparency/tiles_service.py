"""The tlog-tiles read side: tiles and entry bundles from the stored nodes and leaves.

A tile is one range read by primary key over ``log_nodes`` (an entry bundle
over ``log_leaves``): O(1) queries, at most 256 rows, 8 KiB of hashes. Only
what the latest STH publishes is served. Full tiles never change, so the
most recently served ones are kept, as ready responses
(:mod:`nexo.transparency.tile_responses`), in a byte-bounded LRU
(:data:`CACHE_BYTES`) keyed by their path: a hit costs no parse and no query,
which is why the endpoint charges the rate limiter only on a miss.
"""

from __future__ import annotations

from collections import OrderedDict

from nexo.platform.errors import NotFound
from nexo.transparency import repository, service, tile_responses, tiles
from nexo.transparency.tile_responses import TileResponse
from nexo.transparency.tiles import TileId

#: Memory the full-tile cache may hold (a hash tile is 8 KiB; a bundle of device leaves
#: ~55 KiB plus ~4 KiB gzipped).
CACHE_BYTES = 16 * 1024 * 1024


class _FullTiles:
    """Byte-bounded LRU of full tiles' responses by canonical path (``0/137``, ``entries/x001/234``)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.items: OrderedDict[str, TileResponse] = OrderedDict()

    def get(self, path: str) -> TileResponse | None:
        found = self.items.get(path)
        if found is not None:
            self.items.move_to_end(path)
        return found

    def put(self, path: str, response: TileResponse) -> None:
        if response.nbytes > self.budget or path in self.items:
            return
        self.items[path] = response
        self.used += response.nbytes
        while self.used > self.budget:
            _, dropped = self.items.popitem(last=False)
            self.used -= dropped.nbytes


_cache = _FullTiles(CACHE_BYTES)


def not_found(tile: TileId) -> NotFound:
    return NotFound(
        f"{tile.path()} is beyond the latest signed tree head",
        code=service.LogErrorCode.TILE_NOT_FOUND,
        headers={"Cache-Control": "no-store"},
    )


def cached(path: str) -> TileResponse | None:
    """The full tile at ``path`` (below ``tile/``) if this worker holds it: no I/O."""
    return _cache.get(path)


async def tile_response(tile: TileId) -> TileResponse:
    """The response for a tile the published tree holds (kept when full); else ``NotFound``."""
    key = tile.path().removeprefix("tile/")  # what the route's path parameter holds
    if tile.full and (found := _cache.get(key)) is not None:
        return found
    response = tile_responses.build(tile, await tile_body(tile))
    if tile.full:
        _cache.put(key, response)
    return response


async def tile_body(tile: TileId) -> bytes:
    """The body of a hash tile or entry bundle the published tree holds; else ``NotFound``."""
    needed = tile.needs_size()
    if await service.published_size(needed) < needed:
        raise not_found(tile)
    if tile.level is None:
        leaves = await repository.leaf_run(tile.first, tile.width)
        if len(leaves) != tile.width:
            raise not_found(tile)
        return tiles.entry_bundle(leaves)
    hashes = await repository.node_run(tile.node_level, tile.first, tile.width)
    if len(hashes) != tile.width:
        raise not_found(tile)
    return tiles.hash_tile(hashes)
