"""C2SP tlog-tiles paths and bodies (pure): https://c2sp.org/tlog-tiles.

A tile at level ``L``, index ``N`` holds up to 256 consecutive Merkle tree
hashes at height ``8 L``: hash ``i`` is ``MTH(D[(N*256+i)*256**L : (N*256+i+1)*256**L])``,
which is the stored complete-subtree node ``(8 L, N*256 + i)``. An entry
bundle ``N`` holds leaves ``N*256 ..``, each as a big-endian uint16 length
and the leaf bytes. ``N`` is written as zero-padded 3-digit path elements,
all but the last prefixed with ``x`` (1234067 → ``x001/x234/067``); a partial
tile (``W`` of 1..255 hashes) adds ``.p/<W>``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_LEVEL = 63
MAX_ENTRY_BYTES = 0xFFFF

_ELEMENT = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")
_LEVEL = re.compile(r"0|[1-9][0-9]?")


class TilePathError(ValueError):
    """Not a tile path of the spec (or not its canonical spelling)."""


@dataclass(frozen=True, slots=True)
class TileId:
    """``level`` is ``None`` for an entry bundle; ``width`` is 256 for a full tile."""

    level: int | None
    index: int
    width: int

    @property
    def full(self) -> bool:
        return self.width == TILE_WIDTH

    @property
    def node_level(self) -> int:
        """The Merkle height of the tile's hashes (0: leaf hashes)."""
        return TILE_HEIGHT * (self.level or 0)

    @property
    def first(self) -> int:
        """Index of the first hash (node at ``node_level``, or leaf) in the tile."""
        return self.index * TILE_WIDTH

    def needs_size(self) -> int:
        """The smallest tree size in which every hash of the tile exists."""
        return (self.first + self.width) << self.node_level

    def path(self) -> str:
        """The path below the prefix, e.g. ``tile/1/x001/234`` or ``tile/entries/005.p/3``."""
        head = "entries" if self.level is None else str(self.level)
        tail = "" if self.full else f".p/{self.width}"
        return f"tile/{head}/{encode_index(self.index)}{tail}"


def encode_index(n: int) -> str:
    """The spec's N path: 3-digit groups, all but the last with an ``x``."""
    if n < 0:
        raise ValueError("a tile index is not negative")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def parse_path(path: str) -> TileId:
    """Parse ``<L>/<N>[.p/<W>]`` or ``entries/<N>[.p/<W>]`` (what follows ``tile/``)."""
    parts = path.split("/")
    if len(parts) < 2:
        raise TilePathError("a tile path is <L>/<N> or entries/<N>")
    head, rest = parts[0], parts[1:]
    if head == "entries":
        level: int | None = None
    elif _LEVEL.fullmatch(head) and int(head) <= MAX_LEVEL:
        level = int(head)
    else:
        raise TilePathError(f"tile level {head!r} is not 0-63 without leading zeroes")
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not _WIDTH.fullmatch(rest[-1]) or int(rest[-1]) >= TILE_WIDTH:
            raise TilePathError(f"partial width {rest[-1]!r} is not 1-255 without leading zeroes")
        width = int(rest[-1])
        rest = [*rest[:-2], rest[-2][: -len(".p")]]
    *upper, last = rest
    if not _LAST.fullmatch(last) or not all(_ELEMENT.fullmatch(e) for e in upper):
        raise TilePathError("the tile index is 3-digit groups, all but the last starting with x")
    if upper and upper[0] == "x000":
        raise TilePathError("the tile index has a leading zero group")
    index = 0
    for element in [*upper, last]:
        index = index * 1000 + int(element.removeprefix("x"))
    return TileId(level, index, width)


def hash_tile(hashes: Iterable[bytes]) -> bytes:
    """A tile's body: its 32-byte hashes, concatenated."""
    return b"".join(hashes)


def entry_bundle(leaves: Iterable[bytes]) -> bytes:
    """An entry bundle: each leaf as a big-endian uint16 length and its bytes."""
    out = bytearray()
    for leaf in leaves:
        if len(leaf) > MAX_ENTRY_BYTES:
            raise ValueError(f"a {len(leaf)}-byte leaf does not fit an entry bundle")
        out += struct.pack(">H", len(leaf))
        out += leaf
    return bytes(out)


def checkpoint_tiles(size: int) -> list[TileId]:
    """Every hash tile (full and partial) a checkpoint of ``size`` leaves needs (for tests and tools)."""
    tiles: list[TileId] = []
    level = 0
    while True:
        count = size >> (TILE_HEIGHT * level)  # hashes at this tile level
        if count == 0:
            return tiles
        tiles += [TileId(level, n, TILE_WIDTH) for n in range(count // TILE_WIDTH)]
        if count % TILE_WIDTH:
            tiles.append(TileId(level, count // TILE_WIDTH, count % TILE_WIDTH))
        level += 1
