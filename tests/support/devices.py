"""Device registrations and the log's STH chain, checked over HTTP with ``contracts.verify``.

Shared by the device and transparency tests.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
from typing import Any

import httpx

from contracts import verify
from contracts.client import Account

FAST_LIMITS = {"NEXO_RATE_LIMIT": "1000000/minute", "NEXO_AUTH_RATE_LIMIT": "100000/minute"}


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def public_key_url(base_url: str) -> bytes:
    return verify.b64(httpx.get(f"{base_url}/api/log/key", timeout=10).json()["public_key"])


async def register_many(base_url: str, accounts: list[Account], per_account: int) -> list[dict[str, Any]]:
    """Register ``per_account`` devices for each account at once; the 201 bodies."""
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(account: Account, n: int) -> dict[str, Any]:
            response = await client.post(
                f"{base_url}/api/devices",
                json={"name": f"d{n}", "public_key": new_key(), "key_type": "ed25519"},
                headers=account.headers,
            )
            assert response.status_code == 201, response.text
            body: dict[str, Any] = response.json()
            return body

        return list(await asyncio.gather(*(one(a, n) for a in accounts for n in range(per_account))))


def check_chain(base_urls: list[str]) -> list[dict[str, Any]]:
    """Walk every STH: signatures, index steps, links, monotonic size/time, consistency proofs."""
    base_url = base_urls[0]
    log_key = public_key_url(base_url)
    sths: list[dict[str, Any]] = []
    start = 0
    while True:
        page = httpx.get(f"{base_url}/api/sth", params={"start": start, "limit": 1000}, timeout=30).json()
        sths += page["sths"]
        if len(page["sths"]) < 1000:
            break
        start += 1000
    verify.verify_genesis(sths[0])
    for number, sth in enumerate(sths):
        assert sth["index"] == number
        verify.verify_sth(sth, log_key)
    for previous, current in itertools.pairwise(sths):
        verify.verify_link(previous, current)
        if previous["tree_size"] and current["tree_size"] > previous["tree_size"]:
            proof = httpx.get(
                f"{base_urls[current['index'] % len(base_urls)]}/api/log/proof/consistency",
                params={"first": previous["tree_size"], "second": current["tree_size"]},
                timeout=10,
            ).json()
            verify.verify_consistency(
                previous["tree_size"],
                current["tree_size"],
                verify.b64(previous["root_hash"]),
                verify.b64(current["root_hash"]),
                [verify.b64(p) for p in proof["consistency_path"]],
            )
    return sths
