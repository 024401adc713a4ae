"""Merkle tree hashing and proofs, RFC 9162 §2.1 (SHA-256). Pure: no I/O.

Leaf hash ``H(0x00 || leaf)``, node hash ``H(0x01 || left || right)``, the
empty tree hashes to ``H("")``.

Proofs are built from *complete subtrees*: the node at ``(level, index)``
is the hash of leaves ``[index * 2**level, (index + 1) * 2**level)``, and it
exists as soon as the tree holds that many leaves; it never changes after.
Storage keeps those nodes, so a proof for any leaf and any past tree size
needs only the O(log n) nodes named by :func:`inclusion_nodes` or
:func:`consistency_nodes` (see ``repository.py``). :class:`MemoryTree` keeps
the same nodes in lists, for tests; :class:`CompactRange` keeps only the right
edge, for the sequencer (the nodes a batch creates) and the audit (every root).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``(level, index)`` of a complete subtree.
NodeId = tuple[int, int]
Range = tuple[int, int]
NodeGetter = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof, hash or tree size is invalid; the message says which check failed."""


def leaf_hash(leaf: bytes) -> bytes:
    """``SHA-256(0x00 || leaf)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_complete(lo: int, hi: int) -> bool:
    width = hi - lo
    return width > 0 and width & (width - 1) == 0 and lo % width == 0


def range_nodes(lo: int, hi: int) -> list[NodeId]:
    """The complete subtrees whose hashes give ``MTH(D[lo:hi])``, left to right."""
    if hi <= lo:
        return []
    if _is_complete(lo, hi):
        level = (hi - lo).bit_length() - 1
        return [(level, lo >> level)]
    k = split_point(hi - lo)
    return range_nodes(lo, lo + k) + range_nodes(lo + k, hi)


def hash_range(lo: int, hi: int, get: NodeGetter) -> bytes:
    """``MTH(D[lo:hi])`` from complete-subtree hashes (RFC 9162 §2.1.1 recursion)."""
    if hi <= lo:
        return EMPTY_ROOT
    if _is_complete(lo, hi):
        level = (hi - lo).bit_length() - 1
        return get(level, lo >> level)
    k = split_point(hi - lo)
    return node_hash(hash_range(lo, lo + k, get), hash_range(lo + k, hi, get))


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The leaf ranges whose hashes form ``PATH(index, D[size])``, leaf to root (§2.1.3.1)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    ranges: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return ranges


def consistency_ranges(first: int, second: int) -> list[Range]:
    """The leaf ranges whose hashes form ``PROOF(first, D[second])`` (§2.1.4.1)."""
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    ranges: list[Range] = []
    lo, hi, m, whole = 0, second, first, True
    while m != hi - lo:
        k = split_point(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def nodes_for(ranges: Iterable[Range]) -> set[NodeId]:
    """Every complete subtree needed to hash ``ranges``."""
    needed: set[NodeId] = set()
    for lo, hi in ranges:
        needed.update(range_nodes(lo, hi))
    return needed


def inclusion_nodes(index: int, size: int) -> set[NodeId]:
    return nodes_for(inclusion_ranges(index, size))


def consistency_nodes(first: int, second: int) -> set[NodeId]:
    return nodes_for(consistency_ranges(first, second))


def root_nodes(size: int) -> list[NodeId]:
    """The complete subtrees whose hashes give the root of a tree of ``size`` leaves."""
    return range_nodes(0, size)


def _getter(nodes: Mapping[NodeId, bytes]) -> NodeGetter:
    def get(level: int, index: int) -> bytes:
        try:
            return nodes[(level, index)]
        except KeyError:
            raise ProofError(f"node ({level}, {index}) is missing") from None

    return get


def build_path(ranges: Sequence[Range], nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """Hash each range from the given complete subtrees."""
    get = _getter(nodes)
    return [hash_range(lo, hi, get) for lo, hi in ranges]


def hash_ranges(ranges: Iterable[Range], nodes: Mapping[NodeId, bytes]) -> dict[Range, bytes]:
    """The hash of each distinct range (the proofs of one batch share most of theirs)."""
    get = _getter(nodes)
    return {(lo, hi): hash_range(lo, hi, get) for lo, hi in set(ranges)}


def root_from_nodes(size: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    return hash_range(0, size, _getter(nodes))


class CompactRange:
    """The right edge of a growing tree: the root of every prefix in O(log n) memory.

    ``stack`` holds the hashes of the complete subtrees named by :func:`root_nodes`
    of ``size``, left to right (the largest first).
    """

    __slots__ = ("size", "stack")

    def __init__(self, size: int = 0, stack: Sequence[bytes] = ()) -> None:
        if len(stack) != size.bit_count():
            raise ProofError(f"a tree of {size} leaves has {size.bit_count()} edge nodes, not {len(stack)}")
        self.size = size
        self.stack = list(stack)

    @classmethod
    def from_frontier(cls, size: int, frontier: Mapping[NodeId, bytes]) -> CompactRange:
        """The compact range of a tree of ``size`` from its :func:`root_nodes` hashes."""
        stack = []
        for level, index in root_nodes(size):
            try:
                stack.append(frontier[(level, index)])
            except KeyError:
                raise ProofError(f"frontier node ({level}, {index}) is missing") from None
        return cls(size, stack)

    def append(self, value: bytes, created: dict[NodeId, bytes] | None = None) -> None:
        """Append one leaf hash; with ``created``, record every complete subtree it completes."""
        stack = self.stack
        stack.append(value)
        n = self.size
        if created is not None:
            created[(0, n)] = value
            level = 0
            while n & 1:
                right = stack.pop()
                stack[-1] = node_hash(stack[-1], right)
                n >>= 1
                level += 1
                created[(level, n)] = stack[-1]
        else:
            while n & 1:
                right = stack.pop()
                stack[-1] = node_hash(stack[-1], right)
                n >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        result = self.stack[-1]
        for value in reversed(self.stack[:-1]):
            result = node_hash(value, result)
        return result


def appended_nodes(
    size: int, frontier: Mapping[NodeId, bytes], leaf_hashes: Sequence[bytes]
) -> dict[NodeId, bytes]:
    """Every complete subtree that appending ``leaf_hashes`` to a tree of ``size`` creates.

    ``frontier`` holds the nodes named by :func:`root_nodes` of ``size`` (the left
    siblings new nodes need). Costs O(len(leaf_hashes) + log size) hashes.
    """
    created: dict[NodeId, bytes] = {}
    if not leaf_hashes:
        return created
    tree = CompactRange.from_frontier(size, frontier)
    for value in leaf_hashes:
        tree.append(value, created)
    return created


class MemoryTree:
    """Every complete subtree of a growing tree, in memory (``levels[l][i]``)."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for value in leaf_hashes:
            self.append_hash(value)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> int:
        return self.append_hash(leaf_hash(leaf))

    def append_hash(self, value: bytes) -> int:
        """Append one leaf hash; returns its index. O(log n) amortised O(1)."""
        levels = self.levels
        index = len(levels[0])
        levels[0].append(value)
        level, position, current = 0, index, value
        while position & 1:
            current = node_hash(levels[level][position - 1], current)
            level += 1
            position >>= 1
            if len(levels) == level:
                levels.append([])
            levels[level].append(current)
        return index

    def node(self, level: int, index: int) -> bytes:
        try:
            return self.levels[level][index]
        except IndexError:
            raise ProofError(f"node ({level}, {index}) does not exist yet") from None

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size {size} is beyond the {self.size} leaves held")
        return hash_range(0, size, self.node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        if size > self.size:
            raise ProofError(f"tree size {size} is beyond the {self.size} leaves held")
        return [hash_range(lo, hi, self.node) for lo, hi in inclusion_ranges(index, size)]

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        second = self.size if second is None else second
        if second > self.size:
            raise ProofError(f"tree size {second} is beyond the {self.size} leaves held")
        return [hash_range(lo, hi, self.node) for lo, hi in consistency_ranges(first, second)]


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof, per RFC 9162 §2.1.3.2 steps 1-4."""
    if index < 0 or index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    _check_hash(leaf, "the leaf hash")
    fn, sn, r = index, size - 1, leaf
    for position, p in enumerate(path):
        _check_hash(p, f"audit path element {position}")
        if sn == 0:
            raise ProofError("the audit path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the audit path is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> None:
    """Raise :class:`ProofError` unless ``path`` proves ``leaf`` (a leaf hash) at ``index``."""
    _check_hash(root, "the root hash")
    if root_from_inclusion(index, size, leaf, path) != root:
        raise ProofError("the audit path does not lead to the root hash")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> None:
    """Raise :class:`ProofError` unless ``path`` proves tree ``first`` is a prefix of ``second``.

    RFC 9162 §2.1.4.2. A proof from the empty tree is refused (it proves
    nothing); for equal sizes the proof must be empty and the roots equal.
    """
    if first <= 0:
        raise ProofError(f"no consistency proof starts at size {first}: it must be at least 1")
    if second < first:
        raise ProofError(f"size {second} is smaller than size {first}")
    if first == second:
        if path:
            raise ProofError("equal sizes need an empty proof")
        if first_root != second_root:
            raise ProofError("equal sizes but different roots")
        return
    if not path:
        raise ProofError("the consistency proof is empty")
    _check_hash(first_root, "the first root")
    _check_hash(second_root, "the second root")
    for position, c in enumerate(path):
        _check_hash(c, f"consistency path element {position}")
    nodes = list(path)
    if first & (first - 1) == 0:
        nodes.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise ProofError("the consistency path is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency path is too short")
    if fr != first_root:
        raise ProofError("the consistency path does not lead to the first root")
    if sr != second_root:
        raise ProofError("the consistency path does not lead to the second root")
