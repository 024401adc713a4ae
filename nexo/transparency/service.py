"""Read side of the transparency log: STHs, entries, proofs, the key and the checkpoint.

Every proof is built from O(log n) stored subtree hashes (``merkle.py``).
Sizes and indexes are checked against the latest STH: nothing beyond the
published tree is served.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from nexo.errors import BadRequest, ServiceUnavailable
from nexo.transparency import merkle, repository
from nexo.transparency import sth as sth_mod
from nexo.transparency.sth import SignedTreeHead, b64

MAX_PAGE = 1000


class LogErrorCode(StrEnum):
    INVALID_PARAMETER = "invalid_parameter"
    OUT_OF_RANGE = "out_of_range"
    LIMIT_EXCEEDED = "limit_exceeded"
    LOG_UNAVAILABLE = "log_unavailable"
    TILE_NOT_FOUND = "tile_not_found"


def out_of_range(message: str) -> BadRequest:
    return BadRequest(message, code=LogErrorCode.OUT_OF_RANGE)


class _PublishedSize:
    """The largest tree size this process has seen signed. Sizes only grow, so a
    request within it needs no database read to be known in range."""

    value = 0


async def published_size(wanted: int) -> int:
    """A published tree size at least ``wanted`` if there is one (else the latest size)."""
    if wanted <= _PublishedSize.value:
        return _PublishedSize.value
    head = await latest()
    _PublishedSize.value = max(_PublishedSize.value, head.tree_size)
    return head.tree_size


async def latest() -> SignedTreeHead:
    head = await repository.latest_sth()
    if head is None:
        raise ServiceUnavailable("the log has no signed tree head yet", code=LogErrorCode.LOG_UNAVAILABLE)
    return head


async def sth_at(index: int) -> SignedTreeHead:
    head = await repository.get_sth(index)
    if head is None:
        newest = await latest()
        raise out_of_range(f"there is no STH {index}: the latest is {newest.index}")
    return head


async def sth_page(start: int, limit: int) -> list[SignedTreeHead]:
    if limit > MAX_PAGE or limit < 1:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", code=LogErrorCode.LIMIT_EXCEEDED)
    return await repository.list_sths(start, limit)


async def entries(start: int, end: int) -> list[dict[str, Any]]:
    head = await latest()
    if end < start:
        raise out_of_range(f"end ({end}) is before start ({start})")
    if start >= head.tree_size:
        raise out_of_range(f"start ({start}) is beyond the tree ({head.tree_size} leaves)")
    if end - start + 1 > MAX_PAGE:
        raise BadRequest(
            f"at most {MAX_PAGE} entries per request (end is inclusive)", code=LogErrorCode.LIMIT_EXCEEDED
        )
    end = min(end, head.tree_size - 1)
    return [
        {"leaf_index": index, "leaf": b64(leaf), "leaf_hash": b64(merkle.leaf_hash(leaf))}
        for index, leaf in await repository.entries(start, end)
    ]


async def inclusion(leaf_index: int, tree_size: int) -> dict[str, Any]:
    size = await published_size(tree_size)
    if tree_size > size:
        raise out_of_range(f"tree_size {tree_size} is beyond the latest STH ({size} leaves)")
    if leaf_index >= tree_size:
        raise out_of_range(f"leaf_index {leaf_index} is not below tree_size {tree_size}")
    ranges = merkle.inclusion_ranges(leaf_index, tree_size)
    nodes = await repository.get_nodes(merkle.nodes_for(ranges) | {(0, leaf_index)})
    return {
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "leaf_hash": b64(nodes[(0, leaf_index)]),
        "audit_path": [b64(h) for h in merkle.build_path(ranges, nodes)],
    }


async def consistency(first: int, second: int) -> dict[str, Any]:
    if first < 1:
        raise out_of_range("first must be at least 1: nothing is proven from the empty tree")
    if second < first:
        raise out_of_range(f"second ({second}) is smaller than first ({first})")
    size = await published_size(second)
    if second > size:
        raise out_of_range(f"second {second} is beyond the latest STH ({size} leaves)")
    ranges = merkle.consistency_ranges(first, second)
    nodes = await repository.get_nodes(merkle.nodes_for(ranges))
    return {
        "first": first,
        "second": second,
        "consistency_path": [b64(h) for h in merkle.build_path(ranges, nodes)],
    }


def key_info(origin: str, public_key: bytes) -> dict[str, str]:
    return {
        "origin": origin,
        "algorithm": sth_mod.ALGORITHM,
        "public_key": b64(public_key),
        "key_id": b64(sth_mod.key_id(origin, public_key)),
    }


#: Header naming the STH index of the served checkpoint note.
CHECKPOINT_INDEX_HEADER = "Nexo-Checkpoint-Index"


async def served_checkpoint(public_key: bytes) -> tuple[str, dict[str, str]]:
    """The checkpoint note to serve and its headers (which STH it is)."""
    head = await latest()
    return sth_mod.signed_note(head, public_key), {CHECKPOINT_INDEX_HEADER: str(head.index)}
