"""The audit's compact range gives the same roots as the full tree, for every prefix."""

from __future__ import annotations

import random

from nexo.transparency.leaf import is_canonical
from nexo.transparency.merkle import EMPTY_ROOT, CompactRange, MemoryTree


def test_compact_range_roots_match_the_tree() -> None:
    rng = random.Random(7)
    tree, compact = MemoryTree(), CompactRange()
    assert compact.root() == EMPTY_ROOT
    for _ in range(300):
        value = rng.randbytes(32)
        tree.append_hash(value)
        compact.append(value)
        assert compact.root() == tree.root()
        assert len(compact.stack) == bin(compact.size).count("1")


def test_canonical_leaves() -> None:
    assert is_canonical(b'{"a":1,"b":"\xc3\xa9"}')
    assert is_canonical(b'{"a":1,"b":"\\u00e9"}')
    assert not is_canonical(b'{"b":1,"a":2}')
    assert not is_canonical(b'{"a": 1}')
    assert not is_canonical(b"[1]")
    assert not is_canonical(b"\xff")
