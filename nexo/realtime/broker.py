"""Cross-process signal "new messages for user X" (a recipient on another worker or instance).

The signal carries user ids only; the database is the truth and a missed
signal is repaired by the hub's periodic sweep (``feeds.py``), by a full
re-check after a reconnect, and by the client's ``sync``. A publication is
awaited before the batch it signals is acked. Three kinds:

* :class:`LocalBroker` — SQLite (one worker): nothing to tell anyone.
* :class:`RedisBroker` — ``REDIS_URL`` set: Redis pub/sub on
  ``<NEXO_REDIS_PREFIX>:messages``.
* :class:`PostgresBroker` — PostgreSQL without Redis: ``LISTEN/NOTIFY`` on a
  dedicated asyncpg connection (NOTIFY is per database).

A payload is ``<origin>|<id>,<id>,...``; a process ignores its own signals
(it pushed those messages itself, straight from the writer). On the same channel,
``<origin>|deleted:<id>`` says "account <id> was deleted": every other process drops
the names it caches for that id (:attr:`LocalBroker.on_user_deleted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter

from nexo.platform.config import Settings

log = logging.getLogger("nexo.realtime.broker")

PG_CHANNEL = "nexo_messages"
#: NOTIFY payloads must stay under 8000 bytes.
MAX_PAYLOAD = 7000
RECONNECT_SECONDS = 1.0
#: Longest wait for one publication; acks wait for it (then the sweep covers the signal).
PUBLISH_TIMEOUT_SECONDS = 1.0

SIGNALS_SENT = Counter("nexo_broker_signals_sent_total", "Signals published to other processes")
SIGNALS_RECEIVED = Counter("nexo_broker_signals_received_total", "Signals received from other processes")
BROKER_ERRORS = Counter("nexo_broker_errors_total", "Broker publish or subscription failures")

Handler = Callable[[list[int]], None]


def encode(origin: str, user_ids: Iterable[int]) -> list[str]:
    """Payloads of at most :data:`MAX_PAYLOAD` bytes naming every user id."""
    payloads: list[str] = []
    current: list[str] = []
    size = len(origin) + 1
    for user_id in sorted(set(user_ids)):
        text = str(user_id)
        if current and size + len(text) + 1 > MAX_PAYLOAD:
            payloads.append(f"{origin}|{','.join(current)}")
            current, size = [], len(origin) + 1
        current.append(text)
        size += len(text) + 1
    if current:
        payloads.append(f"{origin}|{','.join(current)}")
    return payloads


#: The ids part of an account-deletion signal starts with this.
DELETED_PREFIX = "deleted:"


def deleted_user(payload: str | bytes, own_origin: str) -> int | None:
    """The user id of another process's account-deletion signal, else ``None``."""
    if isinstance(payload, bytes):
        payload = payload.decode(errors="replace")
    origin, _, rest = payload.partition("|")
    if origin == own_origin or not rest.startswith(DELETED_PREFIX):
        return None
    try:
        return int(rest.removeprefix(DELETED_PREFIX))
    except ValueError:
        return None


def decode(payload: str | bytes, own_origin: str) -> list[int]:
    """User ids of a payload from another process; [] for our own or a malformed one."""
    if isinstance(payload, bytes):
        payload = payload.decode(errors="replace")
    origin, _, ids = payload.partition("|")
    if origin == own_origin or not ids:
        return []
    try:
        return [int(part) for part in ids.split(",")]
    except ValueError:
        return []


class LocalBroker:
    """One process: the writer already pushed everything."""

    kind = "local"

    def __init__(self) -> None:
        self.origin = uuid.uuid4().hex
        #: Called with the user id of an account another process deleted.
        self.on_user_deleted: Callable[[int], None] = lambda user_id: None

    async def start(self, on_signal: Handler, on_reconnect: Callable[[], None]) -> None:
        return None

    def publish(self, user_ids: set[int]) -> asyncio.Future[None] | None:
        """Signal other processes; a future done once the signal left (None: nothing to wait for)."""
        return None

    def publish_deleted(self, user_id: int) -> None:
        """Tell every other process that account ``user_id`` is gone (one process: nobody)."""
        return None

    async def close(self) -> None:
        return None


class _RemoteBroker(LocalBroker):
    """Shared plumbing: publish in order from one task, reconnect the subscription."""

    def __init__(self) -> None:
        super().__init__()
        self._outgoing: asyncio.Queue[tuple[str, asyncio.Future[None] | None]] = asyncio.Queue()
        #: False after a failed publication until one succeeds: acks stop waiting meanwhile.
        self._healthy = True
        self._tasks: list[asyncio.Task[None]] = []
        self._on_signal: Handler = lambda ids: None
        self._on_reconnect: Callable[[], None] = lambda: None

    async def start(self, on_signal: Handler, on_reconnect: Callable[[], None]) -> None:
        self._on_signal = on_signal
        self._on_reconnect = on_reconnect
        await self._connect()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._publisher(), name=f"nexo-broker-{self.kind}-pub"),
            loop.create_task(self._subscriber(), name=f"nexo-broker-{self.kind}-sub"),
        ]

    def publish(self, user_ids: set[int]) -> asyncio.Future[None] | None:
        payloads = encode(self.origin, user_ids)
        if not payloads:
            return None
        done: asyncio.Future[None] | None = None
        if self._healthy and self._tasks:
            done = asyncio.get_running_loop().create_future()
        for payload in payloads[:-1]:
            self._outgoing.put_nowait((payload, None))
        self._outgoing.put_nowait((payloads[-1], done))  # published in order: the last one is done last
        return done

    def publish_deleted(self, user_id: int) -> None:
        self._outgoing.put_nowait((f"{self.origin}|{DELETED_PREFIX}{user_id}", None))

    def _received(self, payload: str | bytes) -> None:
        deleted = deleted_user(payload, self.origin)
        if deleted is not None:
            SIGNALS_RECEIVED.inc()
            self.on_user_deleted(deleted)
            return
        ids = decode(payload, self.origin)
        if ids:
            SIGNALS_RECEIVED.inc()
            self._on_signal(ids)

    async def _publisher(self) -> None:
        """Publish everything queued, in order, in one round trip per turn; then release the acks."""
        while True:
            queued = [await self._outgoing.get()]
            while not self._outgoing.empty():
                queued.append(self._outgoing.get_nowait())
            try:
                payloads = [payload for payload, _ in queued]
                await asyncio.wait_for(self._send(payloads), PUBLISH_TIMEOUT_SECONDS)
                SIGNALS_SENT.inc(len(queued))
                self._healthy = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Lost signals: the hub's sweep on the other processes pushes these messages.
                BROKER_ERRORS.inc()
                self._healthy = False
                log.error("broker (%s): publishing a signal failed: %r", self.kind, exc)
            finally:
                for _, done in queued:
                    if done is not None and not done.done():
                        done.set_result(None)

    async def _subscriber(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                BROKER_ERRORS.inc()
                log.error("broker (%s): subscription lost (%r); reconnecting", self.kind, exc)
            await asyncio.sleep(RECONNECT_SECONDS)
            with contextlib.suppress(Exception):
                await self._reconnect()
                self._on_reconnect()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        while not self._outgoing.empty():  # never leave an ack waiting on a publisher that is gone
            _, done = self._outgoing.get_nowait()
            if done is not None and not done.done():
                done.set_result(None)
        with contextlib.suppress(Exception):
            await self._disconnect()

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _reconnect(self) -> None:
        await self._disconnect()
        await self._connect()

    async def _disconnect(self) -> None:
        raise NotImplementedError

    async def _send(self, payloads: list[str]) -> None:
        raise NotImplementedError

    async def _listen(self) -> None:
        raise NotImplementedError


class RedisBroker(_RemoteBroker):
    kind = "redis"

    def __init__(self, redis_url: str, prefix: str) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.channel = f"{prefix}:messages"
        self._client: Any = None
        self._pubsub: Any = None

    async def _connect(self) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(self.redis_url, socket_connect_timeout=1.0)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel)

    async def _disconnect(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    async def _send(self, payloads: list[str]) -> None:
        if len(payloads) == 1:
            await self._client.publish(self.channel, payloads[0])
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.publish(self.channel, payload)
            await pipe.execute()

    async def _listen(self) -> None:
        async for message in self._pubsub.listen():
            if message.get("type") == "message":
                self._received(message["data"])


class PostgresBroker(_RemoteBroker):
    kind = "postgres"

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.database_url = database_url.replace("asyncpg://", "postgresql://", 1)
        self._conn: Any = None
        self._lost: asyncio.Event = asyncio.Event()

    async def _connect(self) -> None:
        import asyncpg

        self._lost = asyncio.Event()
        self._conn = await asyncpg.connect(self.database_url)
        self._conn.add_termination_listener(lambda _conn: self._lost.set())
        await self._conn.add_listener(PG_CHANNEL, self._notified)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._received(payload)

    async def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=1.0)

    async def _send(self, payloads: list[str]) -> None:
        if len(payloads) == 1:
            await self._conn.execute("SELECT pg_notify($1, $2)", PG_CHANNEL, payloads[0])
            return
        await self._conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", PG_CHANNEL, payloads)

    async def _listen(self) -> None:
        await self._lost.wait()
        raise ConnectionError("the LISTEN connection closed")


def make_broker(settings: Settings) -> LocalBroker:
    """Redis when ``REDIS_URL`` is set, else LISTEN/NOTIFY on PostgreSQL, else local."""
    if settings.redis_url:
        return RedisBroker(settings.redis_url, settings.redis_prefix)
    if settings.database_url:
        return PostgresBroker(settings.database_url)
    return LocalBroker()
