"""The last hour of the server's own metrics, sampled for the operator console.

Every ``SAMPLE_SECONDS`` one background task per worker reads the Prometheus
registry (summed over workers in multiprocess mode), the latest tree head (one
indexed row), with witnesses the newest STH cosigned by the quorum (what
``GET /api/log/checkpoint`` serves) and each witness's state row, and the latest
device registrations (``REGISTRATIONS`` rows). The
console endpoint only formats what is in memory, so a refresh costs the server
the same whatever the tables hold. Nothing is counted here: every figure is the
server's own counter, read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from nexo.auth import service as accounts
from nexo.devices import service as devices
from nexo.platform import metrics
from nexo.platform.config import Witness
from nexo.platform.tasks import cancel_and_wait, repeat
from nexo.platform.timefmt import utc_iso
from nexo.transparency import service as log_service
from nexo.web.checklist import Sample

log = logging.getLogger("nexo.web")

SAMPLE_SECONDS = 2.0
HISTORY_SECONDS = 3600
REGISTRATIONS = 10


def read_metrics(now: float) -> dict[str, Any]:
    """The counters the checklist needs, from the metrics registry (pure reading)."""
    out: dict[str, Any] = {"t": now, "ws_closes": {}, "health_buckets": {}}
    totals = {
        "nexo_messages_stored_total": "messages_stored",
        "nexo_messages_duplicates_suppressed_total": "duplicates_suppressed",
        "nexo_ws_open_connections": "ws_open",
        "nexo_refresh_token_reuse_total": "refresh_reuse",
        "nexo_failed_logins_total": "failed_logins",
        "nexo_ratelimit_refused_total": "ratelimit_refused",
    }
    for family in metrics.registry().collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name in totals:
                out[totals[name]] = out.get(totals[name], 0.0) + value
            elif name == "nexo_ws_closes_total":
                code = labels.get("code", "?")
                out["ws_closes"][code] = out["ws_closes"].get(code, 0.0) + value
            elif name == "nexo_http_requests_total" and labels.get("route") == "/api/auth/refresh":
                key = "refresh_ok" if labels.get("status") == "200" else "refresh_refused"
                out[key] = out.get(key, 0.0) + value
            elif (name == "nexo_http_request_duration_seconds_bucket"
                  and labels.get("route") == "/api/health" and labels.get("method") == "GET"):
                bound = float(labels["le"])
                out["health_buckets"][bound] = out["health_buckets"].get(bound, 0.0) + value
    return out


async def read_witnesses(witnesses: tuple[Witness, ...], quorum: int) -> dict[str, Any]:
    """The witnesses' side of the STH row, from what the submitter stored: the STH the
    checkpoint serves (newest cosigned by the quorum), who cosigned it, who is failing."""
    if not witnesses:
        return {}
    values: dict[str, Any] = {"witnesses": len(witnesses), "witness_quorum": quorum}
    cosigned = await log_service.quorum_cosigned(witnesses, quorum)
    if cosigned is not None:
        head, cosigs = cosigned
        values.update(cosigned_index=head.index, cosigned_timestamp_ms=head.head.timestamp_ms,
                      cosigners=tuple(c.name for c in cosigs))
    states = await log_service.witness_states()
    values["witness_errors"] = tuple(
        f"{w.name}: {states[w.name]['last_error']}"
        for w in witnesses if w.name in states and log_service.witness_failing(states[w.name])
    )
    return values


class Sampler:
    """Holds ``HISTORY_SECONDS`` of samples and the latest registrations."""

    def __init__(self, witnesses: tuple[Witness, ...] = (), quorum: int = 0) -> None:
        self.witnesses = witnesses
        self.quorum = quorum
        self.history: deque[Sample] = deque(maxlen=int(HISTORY_SECONDS / SAMPLE_SECONDS) + 1)
        self.registrations: list[dict[str, Any]] = []
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        try:
            values = read_metrics(time.time())
            sth = await log_service.latest_or_none()
            if sth is not None:
                values.update(sth_index=sth.index, sth_tree_size=sth.tree_size,
                              sth_timestamp_ms=sth.head.timestamp_ms)
            values.update(await read_witnesses(self.witnesses, self.quorum))
            latest = await devices.latest_registered(REGISTRATIONS)
            names = await accounts.usernames(d.user_id for d in latest)
        except Exception as exc:  # the console shows it; the server goes on
            if self.error is None:
                log.warning("console sampler: %r", exc)
            self.error = repr(exc)
            return
        self.error = None
        self.history.append(Sample(**values))
        self.registrations = [
            {"username": names.get(d.user_id, "?"), "device_id": str(d.id), "name": d.name,
             "key_type": d.key_type, "leaf_index": d.leaf_index, "created_at": utc_iso(d.created_at),
             "revoked": d.revoked_at is not None}
            for d in latest
        ]

    def start(self) -> None:
        self._task = repeat(SAMPLE_SECONDS, self.sample, "nexo-console-sampler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
