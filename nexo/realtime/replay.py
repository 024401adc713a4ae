"""What ``sync`` may replay for one user, shared by all the user's connections.

A replay costs a frame a row and a frame a KiB of JSON (``ws.SYNC_BYTES_PER_FRAME``).
Besides the connection's frame budget, every replay spends its user's bucket here
(``NEXO_WS_SYNC_RATE``): a burst that covers an ordinary reconnect at once, then the
refill rate. A sync whose user is in debt waits before it reads its next page, so a
user's connections together replay at most the burst, one page each in flight, and the
rate: paced, never refused. Per worker process, like the connection cap.
"""

from __future__ import annotations

import time

#: Forget buckets that have refilled completely at most this often (seconds).
PRUNE_SECONDS = 60.0


class ReplayBudget:
    """A token bucket per user id, created on first spend, forgotten once full again."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[int, tuple[float, float]] = {}  # user id -> (tokens, stamp)
        self._pruned = time.monotonic()

    def _tokens(self, user_id: int, now: float) -> float:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            return self.burst
        tokens, stamp = bucket
        return min(self.burst, tokens + (now - stamp) * self.rate)

    def wait_seconds(self, user_id: int) -> float:
        """Seconds until ``user_id`` may replay again (0.0 while its bucket is positive)."""
        tokens = self._tokens(user_id, time.monotonic())
        return 0.0 if tokens > 0.0 else max(-tokens / self.rate, 0.001)

    def spend(self, user_id: int, tokens: float) -> None:
        now = time.monotonic()
        self._buckets[user_id] = (self._tokens(user_id, now) - tokens, now)
        if now - self._pruned > PRUNE_SECONDS:
            self._pruned = now
            full = [uid for uid in self._buckets if self._tokens(uid, now) >= self.burst]
            for uid in full:
                del self._buckets[uid]
