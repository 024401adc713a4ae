"""``nexo doctor``: the runbook's monitoring checklist, item by item.

HTTP checks run against ``--url`` (default: this host's ``PORT``); database
checks run against the configured database (skipped with ``--no-db``). Each
item prints ✓ or ✗ with what was measured; any ✗ makes the exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from nexo.platform.config import ConfigError, RateLimit, Settings

HEALTH_BUDGET_MS = 200.0
HEALTH_WARMUPS = 5
HEALTH_SAMPLES = 10
RUNBOOK_RATE = RateLimit(100, 60)


@dataclass(frozen=True, slots=True)
class Check:
    item: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.item}: {self.detail}"


CheckFn = Callable[[], Awaitable[Check]]


class Doctor:
    """Runs every checklist item; a failure of one never stops the others."""

    def __init__(self, url: str, settings: Settings | None, settings_error: str | None, use_db: bool) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self.settings_error = settings_error
        self.use_db = use_db and settings is not None
        self.client = httpx.AsyncClient(base_url=self.url, timeout=10, verify=True)

    async def run(self, report: Callable[[Check], None]) -> list[Check]:
        checks: list[tuple[str, CheckFn]] = [
            ("Health endpoint responds < 200ms", self.health),
            ("No duplicate messages in database", self.duplicates),
            ("WebSocket connections stable", self.websocket),
            ("STH chain index incrementing", self.sth_chain),
            ("Witnesses cosigning", self.witnesses),
            ("JWT tokens refreshing properly", self.jwt),
            ("Rate limiting working (100 req/min)", self.rate_limiting),
        ]
        results = []
        try:
            for item, check in checks:
                try:
                    result = await check()
                except Exception as exc:  # a broken check is a failed item, not a crash
                    result = Check(item, False, f"check failed: {exc!r}")
                result = Check(item, result.ok, result.detail)
                report(result)
                results.append(result)
        finally:
            await self.client.aclose()
        return results

    async def health(self) -> Check:
        for _ in range(HEALTH_WARMUPS):
            await self.client.get("/api/health")
        timings, status, body = [], 0, {}
        for _ in range(HEALTH_SAMPLES):
            started = time.perf_counter()
            response = await self.client.get("/api/health")
            timings.append((time.perf_counter() - started) * 1000)
            status, body = response.status_code, response.json()
        worst = max(timings)
        missing = [f for f in ("status", "timestamp", "users_count", "sth_count") if f not in body]
        detail = (
            f"status {status}, median {statistics.median(timings):.1f} ms, "
            f"max {worst:.1f} ms over {HEALTH_SAMPLES} after {HEALTH_WARMUPS} warm-ups"
        )
        if missing:
            detail += f"; missing fields {missing}"
        return Check("", status == 200 and worst < HEALTH_BUDGET_MS and not missing, detail)

    async def duplicates(self) -> Check:
        if not self.use_db:
            return Check("", False, "needs the database: run on a host with its DATABASE_URL (not --no-db)")
        from nexo.ops.repository import find_duplicate_message_ids

        rows = await find_duplicate_message_ids()
        if rows:
            shown = ", ".join(f"{mid} x{n}" for mid, n in rows[:10])
            return Check("", False, f"{len(rows)} duplicated message ids: {shown}")
        return Check("", True, "the runbook's duplicate query returns no rows")

    async def websocket(self) -> Check:
        import websockets

        ws_url = "ws" + self.url.removeprefix("http") + "/ws"
        try:
            async with websockets.connect(ws_url, open_timeout=5, close_timeout=5) as ws:
                await ws.send(json.dumps({"type": "auth", "token": "doctor.invalid.token"}))
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except websockets.ConnectionClosed:
                    pass
                await asyncio.wait_for(ws.wait_closed(), 10)
                code = ws.close_code
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            why = f"the upgrade got HTTP {status}" if status else f"{type(exc).__name__}: {exc}"
            return Check("", False, f"{ws_url}: {why}"[:300])
        ok = code == 4401
        return Check(
            "", ok, f"{ws_url} accepts the upgrade and closes a bad token with {code} (expected 4401)"
        )

    async def sth_chain(self) -> Check:
        health = (await self.client.get("/api/health")).json()
        count = int(health.get("sth_count", 0))
        if count == 0:
            return Check("", False, "no signed tree head yet (STH 0 is made at first start)")
        latest = await self.client.get("/api/sth/latest")
        if latest.status_code != 200:
            return Check("", False, f"GET /api/sth/latest answered {latest.status_code}")
        index = int(latest.json()["index"])
        if index != count - 1:
            return Check("", False, f"latest STH index {index} but sth_count {count}")
        stale = [w["message"] for w in health.get("warnings", []) if w.get("code") == "sth_stale"]
        if stale:
            return Check("", False, f"latest index {index}; {stale[0]}")
        problems = await self._audit()
        if problems:
            return Check("", False, f"latest index {index}; audit: {problems}")
        age = health.get("sth_latest_age_seconds")
        return Check("", True, f"latest index {index} = sth_count - 1, {age} s old; audit clean")

    async def witnesses(self) -> Check:
        """Each configured witness's latest cosigned STH, failures and last error."""
        if self.settings is None:
            return Check("", False, self.settings_error or "settings not loaded")
        configured = self.settings.witnesses
        if not configured:
            return Check("", True, "no witnesses configured (NEXO_WITNESSES)")
        if not self.use_db:
            return Check("", False, "needs the database: run on a host with its DATABASE_URL (not --no-db)")
        from nexo.transparency import service as log_service

        states = await log_service.witness_states()
        latest = int((await self.client.get("/api/sth/latest")).json()["index"])
        healthy, lines = 0, []
        for witness in configured:
            state = states.get(witness.name)
            if state is None:
                lines.append(f"{witness.name}: never submitted to")
                continue
            cosigned = int(state["cosigned_index"])
            line = f"{witness.name}: cosigned STH {cosigned} (latest {latest}), {state['failures']} failures"
            if log_service.witness_failing(state):
                line += f", last error: {state['last_error']}"
            elif cosigned >= 0:
                healthy += 1
            lines.append(line)
        quorum = self.settings.witness_quorum
        return Check(
            "",
            healthy >= quorum,
            f"{healthy} of {len(configured)} healthy, quorum {quorum}; " + "; ".join(lines),
        )

    async def _audit(self) -> str | None:
        """Run the transparency audit against the URL; ``None`` when clean."""
        from nexo.transparency import service

        return await service.audit_url_summary(self.url)

    async def jwt(self) -> Check:
        if self.settings is None:
            return Check("", False, self.settings_error or "settings not loaded")
        notes = []
        ok = True
        if self.settings.access_token_ttl != 3600:
            notes.append(f"access tokens live {self.settings.access_token_ttl}s (runbook: 1 hour)")
        notes.append(
            f"JWT_SECRET {len(self.settings.jwt_secret.encode())} bytes, issuer {self.settings.jwt_issuer!r}"
        )
        if self.settings.jwt_previous_secrets:
            notes.append(f"{len(self.settings.jwt_previous_secrets)} previous secret(s) still accepted")
        response = await self.client.get("/api/me", headers={"Authorization": "Bearer not.a.token"})
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code != 401 or not challenge.startswith("Bearer"):
            ok = False
            notes.append(f"a forged token got {response.status_code} (expected 401 with WWW-Authenticate)")
        else:
            notes.append("a forged token gets 401")
        return Check("", ok, "; ".join(notes))

    async def rate_limiting(self) -> Check:
        response = await self.client.get("/api/doctor-rate-probe")
        policy = response.headers.get("ratelimit-policy")
        if not policy or "x-ratelimit-limit" not in response.headers:
            return Check(
                "", False, "API responses carry no RateLimit-Policy header: the limiter is not active"
            )
        detail = f"active: RateLimit-Policy {policy}, {response.headers['x-ratelimit-remaining']} left"
        expected = f"q={RUNBOOK_RATE.amount};w={RUNBOOK_RATE.window_seconds}"
        if expected not in policy:
            detail += " (differs from the runbook's 100/minute)"
        ok = True
        if self.settings is not None and self.settings.workers > 1 and not self.settings.redis_url:
            ok = False
            detail += f"; {self.settings.workers} workers without REDIS_URL: limits are per process"
        return Check("", ok, detail)


def load(dev: bool = False) -> tuple[Settings | None, str | None]:
    try:
        return Settings.from_env(dev=dev), None
    except ConfigError as exc:
        return None, str(exc)
