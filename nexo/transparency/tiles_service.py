"""The tlog-tiles read side: tiles and entry bundles from the stored nodes and leaves.

A tile is one range read by primary key over ``log_nodes`` (an entry bundle
over ``log_leaves``): O(1) queries, at most 256 rows, 8 KiB of hashes. Only
what the latest STH publishes is served. Full tiles never change, so the
most recently served ones are kept in a byte-bounded LRU (:data:`CACHE_BYTES`).
"""

from __future__ import annotations

from collections import OrderedDict

from nexo.errors import NotFound
from nexo.transparency import repository, service, tiles
from nexo.transparency.tiles import TileId

#: Memory the full-tile cache may hold (a hash tile is 8 KiB; a bundle of device leaves ~70 KiB).
CACHE_BYTES = 16 * 1024 * 1024


class _FullTiles:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.items: OrderedDict[TileId, bytes] = OrderedDict()

    def get(self, tile: TileId) -> bytes | None:
        body = self.items.get(tile)
        if body is not None:
            self.items.move_to_end(tile)
        return body

    def put(self, tile: TileId, body: bytes) -> None:
        if len(body) > self.budget or tile in self.items:
            return
        self.items[tile] = body
        self.used += len(body)
        while self.used > self.budget:
            _, dropped = self.items.popitem(last=False)
            self.used -= len(dropped)


_cache = _FullTiles(CACHE_BYTES)


def not_found(tile: TileId) -> NotFound:
    return NotFound(
        f"{tile.path()} is beyond the latest signed tree head",
        code=service.LogErrorCode.TILE_NOT_FOUND,
        headers={"Cache-Control": "no-store"},
    )


async def tile_body(tile: TileId) -> bytes:
    """The body of a hash tile or entry bundle the published tree holds; else ``NotFound``."""
    if tile.full and (cached := _cache.get(tile)) is not None:
        return cached
    needed = tile.needs_size()
    if await service.published_size(needed) < needed:
        raise not_found(tile)
    if tile.level is None:
        leaves = await repository.leaf_run(tile.first, tile.width)
        if len(leaves) != tile.width:
            raise not_found(tile)
        body = tiles.entry_bundle(leaves)
    else:
        hashes = await repository.node_run(tile.node_level, tile.first, tile.width)
        if len(hashes) != tile.width:
            raise not_found(tile)
        body = tiles.hash_tile(hashes)
    if tile.full:
        _cache.put(tile, body)
    return body
