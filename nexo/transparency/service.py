"""Read side of the transparency log: STHs, entries, proofs, the key and the checkpoint.

Every proof is built from O(log n) stored subtree hashes (``merkle.py``).
Sizes and indexes are checked against the latest STH: nothing beyond the
published tree is served.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from nexo.platform.config import Settings, Witness
from nexo.platform.errors import BadRequest, ServiceUnavailable
from nexo.transparency import merkle, repository, witness_repository
from nexo.transparency import sth as sth_mod
from nexo.transparency.cosignature import Cosignature
from nexo.transparency.leaf import canonical_leaf as canonical_leaf
from nexo.transparency.sequencer import Rejected as Rejected
from nexo.transparency.sequencer import Sequenced as Sequenced
from nexo.transparency.sequencer import Sequencer as Sequencer
from nexo.transparency.sth import SignedTreeHead, b64

MAX_PAGE = 1000


class STHModel(BaseModel):
    index: int
    tree_size: int
    root_hash: str
    timestamp_ms: int
    prev_sth_hash: str
    origin: str
    signature: str
    sth_hash: str


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


async def latest_or_none() -> SignedTreeHead | None:
    """The latest STH, or None before the first (the console's sampler)."""
    return await repository.latest_sth()


async def leaves_at(indexes: Iterable[int]) -> dict[int, bytes]:
    """The leaves at these indexes (absent ones are left out)."""
    return await repository.leaves_at(indexes)


#: Each witness's state row by name, and whether its latest submission failed (the console
#: and ``nexo doctor`` show them; the submitter writes them).
witness_states = witness_repository.states
witness_failing = witness_repository.failing


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


#: Headers naming the STH of the served checkpoint note and how many cosignatures it carries.
CHECKPOINT_INDEX_HEADER = "Nexo-Checkpoint-Index"
CHECKPOINT_COSIGNATURES_HEADER = "Nexo-Checkpoint-Cosignatures"


class _QuorumMark:
    """The newest STH index known to be cosigned by the quorum (it only grows), so each
    request scans only the cosignatures stored since."""

    value = -1


async def quorum_cosigned(
    witnesses: tuple[Witness, ...], quorum: int
) -> tuple[SignedTreeHead, list[Cosignature]] | None:
    """The newest STH cosigned by ``quorum`` of ``witnesses`` and their cosignatures of it
    (``None`` without witnesses or while no STH is)."""
    if not (witnesses and quorum):
        return None
    names = [w.name for w in witnesses]
    index = await witness_repository.newest_cosigned(names, quorum, max(0, _QuorumMark.value))
    if index is None:
        return None
    _QuorumMark.value = max(_QuorumMark.value, index)
    head = await repository.get_sth(index)
    if head is None:
        return None
    cosigs = (await witness_repository.cosignatures(index, index)).get(index, [])
    return head, [c for c in cosigs if c.name in names]


async def served_checkpoint(
    public_key: bytes, witnesses: tuple[Witness, ...] = (), quorum: int = 0
) -> tuple[str, dict[str, str]]:
    """The note to serve: the newest STH cosigned by ``quorum`` of ``witnesses``, with the log's
    signature and those cosignature lines; the latest STH (log signature only) when none is."""
    cosigned = await quorum_cosigned(witnesses, quorum)
    head, cosigs = cosigned if cosigned is not None else (await latest(), [])
    note = sth_mod.signed_note(head, public_key) + "".join(f"{c.line()}\n" for c in cosigs)
    return note, {CHECKPOINT_INDEX_HEADER: str(head.index), CHECKPOINT_COSIGNATURES_HEADER: str(len(cosigs))}


def witness_info(witnesses: tuple[Witness, ...], quorum: int) -> dict[str, Any]:
    return {
        "quorum": quorum,
        "witnesses": [{"name": w.name, "vkey": w.key.vkey, "url": w.url} for w in witnesses],
    }


def cosignature_json(cosig: Cosignature) -> dict[str, Any]:
    return {
        "witness": cosig.name,
        "key_id": b64(cosig.key_id),
        "timestamp": cosig.timestamp,
        "signature": b64(cosig.signature),
        "line": cosig.line(),
    }


async def sth_json(heads: list[SignedTreeHead]) -> list[dict[str, Any]]:
    """The STH objects, each with ``cosignatures`` when witnesses cosigned it."""
    bodies = [head.to_json() for head in heads]
    if heads:
        stored = await witness_repository.cosignatures(heads[0].index, heads[-1].index)
        for body in bodies:
            if found := stored.get(body["index"]):
                body["cosignatures"] = [cosignature_json(c) for c in found]
    return bodies


# What other features call of the rest of transparency. The audit and the command
# helpers are imported on call: they are heavy and needed only by `nexo` commands.


def witness_request_timeout() -> float:
    """How long the witness submitter waits for one witness's answer, in seconds."""
    from nexo.transparency.witness import REQUEST_TIMEOUT

    return REQUEST_TIMEOUT


def offline_settings() -> Settings:
    """Settings for a command that reads the database but issues no tokens."""
    from nexo.transparency.commands import offline_settings

    return offline_settings()


async def audit_url_summary(url: str) -> str | None:
    """Full audit of a deployment through its API; ``None`` when clean (for ``nexo doctor``)."""
    from nexo.transparency.audit.http import audit_url_summary

    return await audit_url_summary(url)


async def audit_database_summary(settings: Settings) -> str | None:
    """Full audit of the open database; ``None`` when clean (for ``nexo db import``)."""
    from nexo.transparency.audit.database import audit_database_summary

    return await audit_database_summary(settings)
