"""Expired rows of the auth tables are deleted on a schedule (``NEXO_PRUNE_INTERVAL``).

``login_failures``, ``refresh_tokens`` and ``sessions`` grow with every failed
login, refresh and login; without pruning they only grow. Every
``NEXO_PRUNE_INTERVAL`` seconds (default 3600; 0 turns it off) each worker deletes,
in batches of :data:`nexo.auth.repository.PRUNE_BATCH`:

* failed logins older than the lockout window (they no longer count);
* refresh tokens past their expiry (no request can use or replay them);
* sessions revoked more than one access-token lifetime ago, and sessions with no
  refresh token left (their tokens all expired), with their refresh tokens.

Deleting is idempotent, so several workers pruning at once only repeat each other.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nexo.auth import repository
from nexo.platform.config import Settings

log = logging.getLogger("nexo.auth.pruning")


@dataclass(frozen=True, slots=True)
class Pruned:
    login_failures: int
    refresh_tokens: int
    sessions: int


async def prune_once(settings: Settings, now: datetime | None = None) -> Pruned:
    """Delete every expired row once."""
    now = now or datetime.now(UTC)
    failures = await repository.prune_login_failures(now - timedelta(seconds=settings.login_lockout_window))
    tokens = await repository.prune_refresh_tokens(now)
    sessions = await repository.prune_sessions(
        revoked_before=now - timedelta(seconds=settings.access_token_ttl),
        created_before=now - timedelta(seconds=settings.access_token_ttl),
    )
    return Pruned(failures, tokens, sessions)


async def prune_forever(settings: Settings) -> None:
    """Every ``settings.prune_interval`` seconds, :func:`prune_once`; errors are logged, not fatal."""
    while True:
        await asyncio.sleep(settings.prune_interval)
        try:
            pruned = await prune_once(settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be away; try again next time
            log.error("pruning expired auth rows failed: %r", exc)
            continue
        if pruned.login_failures or pruned.refresh_tokens or pruned.sessions:
            log.info(
                "pruned %d login failures, %d refresh tokens, %d sessions",
                pruned.login_failures,
                pruned.refresh_tokens,
                pruned.sessions,
            )
