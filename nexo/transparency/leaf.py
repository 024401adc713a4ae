"""The log's leaf format. Pure: no I/O.

Each leaf is one device event (a registration or a revocation) as UTF-8 JSON
with sorted keys and no spaces::

    {"action","device_id","key_type","public_key","timestamp_ms","user_id","username"}

:func:`canonical_leaf` writes it; :func:`is_canonical` is the audit's check of a leaf read back.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_leaf(event: dict[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def is_canonical(leaf: bytes) -> bool:
    """A JSON object with sorted keys and no spaces.

    Non-ASCII either raw UTF-8 (what :func:`canonical_leaf` writes) or ``\\u``-escaped.
    """
    try:
        event = json.loads(leaf)
    except ValueError:
        return False
    if not isinstance(event, dict):
        return False
    return any(
        json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only).encode() == leaf
        for ascii_only in (False, True)
    )
