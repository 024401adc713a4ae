"""The audit's source for a deployment's public API only (``nexo audit --url``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from nexo.transparency import sth as sth_mod
from nexo.transparency.audit.checks import RawSTH, run_audit
from nexo.transparency.audit.report import anomalies_line
from nexo.transparency.cosignature import Cosignature
from nexo.transparency.sth import SignedTreeHead, TreeHead


class RemoteSource:
    """A deployment's public API only (``--url``)."""

    PAGE = 1000
    #: Requests in flight at once. It reads ahead: the consistency proofs of a page of STHs
    #: and the next page of entries are fetched while the audit checks the current ones.
    #: More is slower: httpx checks every pooled connection on each request.
    CONCURRENCY = 4

    def __init__(self, base_url: str, client: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self._slots = asyncio.Semaphore(self.CONCURRENCY)
        self._proofs: dict[tuple[int, int], asyncio.Task[list[bytes]]] = {}
        self._last_size: object = None

    async def aclose(self) -> None:
        """Cancel what was read ahead and not asked for (an audit that stopped early)."""
        for task in self._proofs.values():
            task.cancel()
        await asyncio.gather(*self._proofs.values(), return_exceptions=True)
        self._proofs.clear()

    async def _get(self, path: str, **params: int) -> Any:
        async with self._slots:
            response = await self.client.get(f"{self.base_url}{path}", params=params)
        if response.status_code != 200:
            raise LookupError(f"GET {path} answered {response.status_code}: {response.text[:200]}")
        return response.json()

    async def public_key(self) -> bytes:
        info = await self._get("/api/log/key")
        return sth_mod.unb64(info["public_key"], "public_key")

    async def totals(self) -> tuple[int, int]:
        latest = await self._get("/api/sth/latest")
        return int(latest["index"]) + 1, int(latest["tree_size"])

    async def sths(self) -> AsyncIterator[RawSTH]:
        start = 0
        while True:
            page = (await self._get("/api/sth", start=start, limit=self.PAGE))["sths"]
            self._read_proofs_ahead(page)
            for item in page:
                yield _raw_from_json(item)
            if len(page) < self.PAGE:
                return
            start = int(page[-1]["index"]) + 1

    def _read_proofs_ahead(self, page: list[Any]) -> None:
        """Start fetching the proof between each pair of neighbours the audit will ask for."""
        first = self._last_size
        for item in page:
            second = item.get("tree_size") if isinstance(item, dict) else None
            if isinstance(first, int) and isinstance(second, int) and 0 < first < second:
                if (first, second) not in self._proofs:
                    self._proofs[first, second] = asyncio.create_task(self._fetch_consistency(first, second))
            first = second
        self._last_size = first

    async def leaves(self) -> AsyncIterator[tuple[int, bytes, bytes | None]]:
        latest = await self._get("/api/sth/latest")
        size = int(latest["tree_size"])
        pending = asyncio.create_task(self._entries(0, size)) if size > 0 else None
        try:
            while pending is not None:
                entries = await pending
                pending = None
                if not entries:
                    return
                start = int(entries[-1]["leaf_index"]) + 1
                if start < size:
                    pending = asyncio.create_task(self._entries(start, size))
                for entry in entries:
                    yield (
                        int(entry["leaf_index"]),
                        sth_mod.unb64(entry["leaf"], "leaf"),
                        sth_mod.unb64(entry["leaf_hash"], "leaf_hash"),
                    )
        finally:
            if pending is not None:
                pending.cancel()

    async def _entries(self, start: int, size: int) -> list[Any]:
        end = min(start + self.PAGE, size) - 1
        entries: list[Any] = (await self._get("/api/log/entries", start=start, end=end))["entries"]
        return entries

    async def consistency(self, first: int, second: int) -> list[bytes]:
        if first == second:
            return []
        ahead = self._proofs.pop((first, second), None)
        if ahead is not None:
            return await ahead
        return await self._fetch_consistency(first, second)

    async def _fetch_consistency(self, first: int, second: int) -> list[bytes]:
        body = await self._get("/api/log/proof/consistency", first=first, second=second)
        return [sth_mod.unb64(p, "consistency path") for p in body["consistency_path"]]


def _raw_from_json(item: dict[str, Any]) -> RawSTH:
    try:
        head = TreeHead(
            origin=str(item["origin"]),
            index=int(item["index"]),
            tree_size=int(item["tree_size"]),
            root_hash=sth_mod.unb64(item["root_hash"], "root_hash"),
            timestamp_ms=int(item["timestamp_ms"]),
            prev_sth_hash=sth_mod.unb64(item["prev_sth_hash"], "prev_sth_hash"),
        )
        cosigs = tuple(
            Cosignature(
                str(c["witness"]),
                sth_mod.unb64(c["key_id"], "key_id"),
                int(c["timestamp"]),
                sth_mod.unb64(c["signature"], "cosignature"),
            )
            for c in item.get("cosignatures", ())
        )
        return RawSTH(
            SignedTreeHead(head, sth_mod.unb64(item["signature"], "signature")),
            sth_mod.unb64(item["sth_hash"], "sth_hash"),
            cosigs,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed STH from the server: {exc}") from None


async def audit_url_summary(url: str) -> str | None:
    """Full audit of a deployment through its API; ``None`` when clean (for ``nexo doctor``)."""
    async with (
        httpx.AsyncClient(timeout=30) as client,
        contextlib.aclosing(RemoteSource(url, client)) as source,
    ):
        return anomalies_line(await run_audit(source))
