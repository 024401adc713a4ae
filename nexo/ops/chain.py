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
    """Audit the chain stored in the open database; ``None`` when clean."""
    module = _audit_module()
    full = getattr(module, "audit_database_summary", None) if module else None
    if full is not None:
        return await full(settings)
    from nexo.transparency.models import SignedTreeHead

    rows = (
        await SignedTreeHead.all()
        .order_by("index")
        .values("index", "tree_size", "timestamp_ms", "prev_sth_hash", "sth_hash")
    )
    problems = _links(rows)
    return "; ".join(problems[:10]) if problems else None


def _audit_module() -> Any:
    try:
        return importlib.import_module("nexo.transparency.audit")
    except ImportError:
        return None
