"""The STH chain check used by ``nexo doctor`` and ``nexo db import``.

Prefers the transparency feature's full audit (``nexo.transparency.audit``:
signatures, proofs, recomputed roots); until that is available it checks the
links an operator can see over the API: index steps, ``prev_sth_hash`` links,
monotonic size and time.
"""

from __future__ import annotations

import importlib
from typing import Any

import httpx

PAGE = 1000


def _links(sths: list[dict[str, Any]]) -> list[str]:
    problems = []
    for i, sth in enumerate(sths):
        if int(sth["index"]) != i:
            problems.append(f"STH at position {i} has index {sth['index']}")
            break
        if i == 0:
            continue
        prev = sths[i - 1]
        if sth["prev_sth_hash"] != prev["sth_hash"]:
            problems.append(f"STH {i} prev_sth_hash does not link to STH {i - 1}")
        if int(sth["tree_size"]) < int(prev["tree_size"]):
            problems.append(f"STH {i} tree shrank")
        if int(sth["timestamp_ms"]) < int(prev["timestamp_ms"]):
            problems.append(f"STH {i} went back in time")
    return problems


async def audit_url(url: str) -> str | None:
    """Audit the chain served at ``url``; ``None`` when clean, else the anomalies."""
    full = _full_audit()
    if full is not None:
        return await full(url)
    sths: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while True:
            response = await client.get("/api/sth", params={"start": len(sths), "limit": PAGE})
            response.raise_for_status()
            page = response.json()["sths"]
            sths.extend(page)
            if len(page) < PAGE:
                break
    problems = _links(sths)
    return "; ".join(problems[:10]) if problems else None


def _full_audit() -> Any:
    module = _audit_module()
    return getattr(module, "audit_url_summary", None) if module else None


async def audit_database(settings: Any) -> str | None:
    """Audit the chain stored in the open database; ``None`` when clean.

    Checks every STH's signature with the log key (``NEXO_SIGNING_KEY_FILE``),
    its ``sth_hash``, the index step, the ``prev_sth_hash`` link, monotonic size
    and time, and its root against the root recomputed from the stored leaves.
    """
    module = _audit_module()
    full = getattr(module, "audit_database_summary", None) if module else None
    if full is not None:
        return await full(settings)
    from nexo.transparency import merkle, sth
    from nexo.transparency.keys import read_key
    from nexo.transparency.models import LogLeaf, SignedTreeHead

    rows = await SignedTreeHead.all().order_by("index")
    if not rows:
        return None
    problems: list[str] = []
    public_key: bytes | None = None
    if settings.signing_key_path.exists():
        public_key = sth.public_key_bytes(read_key(settings.signing_key_path))
    else:
        problems.append(f"no log signing key at {settings.signing_key_path}: copy it with the data")
    tree = merkle.MemoryTree()
    leaves = LogLeaf.all().order_by("leaf_index").values_list("leaf_index", "leaf")
    for position, (leaf_index, leaf) in enumerate(await leaves):
        if leaf_index != position:
            problems.append(f"leaf {position} is missing (next stored leaf is {leaf_index})")
            break
        tree.append(bytes(leaf))
    previous: sth.SignedTreeHead | None = None
    for position, row in enumerate(rows):
        head = sth.SignedTreeHead(
            sth.TreeHead(
                origin=row.origin,
                index=row.index,
                tree_size=row.tree_size,
                root_hash=bytes(row.root_hash),
                timestamp_ms=row.timestamp_ms,
                prev_sth_hash=bytes(row.prev_sth_hash),
            ),
            bytes(row.signature),
        )
        where = f"STH {row.index}"
        if row.index != position:
            problems.append(f"{where} is at position {position}: the index does not step by one")
        if head.sth_hash != bytes(row.sth_hash):
            problems.append(f"{where}: sth_hash does not match its signed bytes and signature")
        if public_key is not None:
            try:
                sth.verify(head, public_key)
            except sth.STHError as exc:
                problems.append(f"{where}: {exc}")
        expected_prev = previous.sth_hash if previous is not None else bytes(32)
        if head.prev_sth_hash != expected_prev:
            problems.append(f"{where}: prev_sth_hash does not link to the previous STH")
        if previous is not None and head.tree_size < previous.tree_size:
            problems.append(f"{where}: the tree shrank")
        if previous is not None and head.timestamp_ms < previous.timestamp_ms:
            problems.append(f"{where}: time went backwards")
        if head.tree_size > tree.size:
            problems.append(f"{where}: tree size {head.tree_size} but only {tree.size} leaves stored")
        elif tree.root(head.tree_size) != head.root_hash:
            problems.append(f"{where}: root_hash differs from the root recomputed from the leaves")
        previous = head
    return "; ".join(problems[:10]) if problems else None


def _audit_module() -> Any:
    try:
        return importlib.import_module("nexo.transparency.audit")
    except ImportError:
        return None
