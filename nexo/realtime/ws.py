"""The WebSocket endpoint ``/ws`` (docs/messaging.md): the reader loop.

One task per connection reads frames (only it calls ``recv()``); everything
outgoing goes through the connection's outbox (``connection.Connection``). A ``send``
is validated, rate limited, and handed to the group-commit writer without
waiting: the ack is posted when its batch commits, so one connection can keep
many sends in flight.

Sanic runs this handler after the handshake (``handshake.py`` admits the
upgrade and authenticates the socket: failures are "accept, then close
4401"). An exception that escapes would close with 1000:
it is caught, logged with the request id, and closed with 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter

from sanic import Blueprint, Request, Websocket
from websockets.exceptions import ConnectionClosed

from nexo.auth import service as accounts
from nexo.context import AppContext, NexoApp, app_context
from nexo.messages import service
from nexo.messages.service import Outcome, Sender, SendResult
from nexo.platform.ratelimit import Bucket, client_address
from nexo.realtime.broker import LocalBroker, make_broker
from nexo.realtime.connection import CLOSES, Connection
from nexo.realtime.handshake import (
    PENDING_REFUSED,
    Unauthenticated,
    admit_upgrade,
    authenticate,
    close_unauthorized,
    opaque_header_bytes,
    verified_principal,
)
from nexo.realtime.hub import Hub
from nexo.realtime.inbox import Inbox
from nexo.realtime.protocol import (
    Auth,
    CloseCode,
    Delivered,
    FrameError,
    Send,
    Sync,
    WsError,
    ack_frame,
    error_frame,
    message_frame,
    parse_frame,
    rate_limited_frame,
    synced_frame,
)
from nexo.realtime.replay import ReplayBudget
from nexo.realtime.sessions import SessionWatch
from nexo.realtime.transport import WebSocketTransport

log = logging.getLogger("nexo.realtime")

#: Rows per database read of a ``sync``; the next page is read only once the previous
#: one has been handed to the socket (paced by the client's reads).
SYNC_PAGE = 100
#: Bytes of a ``sync`` replay charged as one frame of the connection's budget.
SYNC_BYTES_PER_FRAME = 1024
#: Frames read from the inbox in one go (consecutive sends share one rate-limit hit).
BURST = 128

bp = Blueprint("realtime")

bp.on_request(opaque_header_bytes)
bp.on_request(admit_upgrade)


def setup(app: NexoApp) -> None:
    app.blueprint(bp)

    @app.before_server_start
    async def start_realtime(app: NexoApp) -> None:
        settings = app.ctx.settings
        broker = make_broker(settings)
        # Another process may store messages for our users only when a broker links us.
        hub = Hub(settings.ws_push_sweep_seconds if broker.kind != "local" else None)
        hub.start()
        await hub.start_hint()
        app.ctx.ws_pending = Counter()
        sync_rate = settings.ws_sync_rate
        app.ctx.replay_budget = ReplayBudget(sync_rate.amount / sync_rate.window_seconds, sync_rate.amount)
        app.ctx.hub = hub
        app.ctx.broker = broker
        app.ctx.session_watch = SessionWatch(hub, accounts.live_sessions)
        app.ctx.session_watch.start()
        try:
            await broker.start(hub.signal, hub.signal_everyone)
        except Exception as exc:
            # Pushes across processes are late until it answers; sync still repairs.
            log.error("broker (%s) did not start: %r; cross-process push is off", broker.kind, exc)
            app.ctx.broker = LocalBroker()

    @app.before_server_stop
    async def stop_realtime(app: NexoApp) -> None:
        hub = app.ctx.hub
        hub.closing = True
        # In-flight batches commit and their acks are queued, then every socket
        # flushes its outbox and closes with 1001.
        await app.ctx.message_writer.drain()
        await app.ctx.session_watch.stop()
        await hub.close_all(CloseCode.GOING_AWAY, "server is shutting down")
        await hub.stop()
        await app.ctx.broker.close()


@bp.websocket("/ws")
async def websocket(request: Request, ws: Websocket) -> None:
    ctx = app_context(request)
    request_id = getattr(request, "request_id", None) or uuid.uuid4().hex  # NexoRequest.request_id
    conn: Connection | None = None
    hub = ctx.hub
    settings = ctx.settings
    rate = settings.ws_frame_rate
    transport = WebSocketTransport(ws)
    inbox = Inbox(transport, rate.amount / rate.window_seconds, rate.amount)
    pending = ctx.ws_pending
    # Only upgrades that wait for an auth frame hold a socket unauthenticated for long.
    address = client_address(request) if "authorization" not in request.headers else None
    try:
        if address is not None:
            pending[address] += 1
        try:
            if address is not None and pending[address] > settings.ws_max_pending_per_address:
                # Upgrades that raced past the check before the handshake.
                PENDING_REFUSED.inc()
                CLOSES.labels(str(int(CloseCode.TOO_MANY_CONNECTIONS))).inc()
                await transport.close(CloseCode.TOO_MANY_CONNECTIONS, "too many unauthenticated connections")
                return
            principal = await authenticate(request, inbox)
        except Unauthenticated as exc:
            await close_unauthorized(transport, str(exc))
            return
        finally:
            if address is not None:
                pending[address] -= 1
                if pending[address] <= 0:
                    del pending[address]
        cap = settings.ws_max_connections_per_user
        if hub.connections_of(principal.user_id) >= cap:
            CLOSES.labels(str(int(CloseCode.TOO_MANY_CONNECTIONS))).inc()
            await transport.close(
                CloseCode.TOO_MANY_CONNECTIONS, f"too many connections: at most {cap} per user"
            )
            return
        conn = Connection(
            transport,
            principal.user_id,
            principal.username,
            principal.session_id,
            request_id,
            settings.ws_write_timeout,
            settings.ws_outbox_bytes,
        )
        conn.start()
        # Also pushes what was committed between the handshake and now.
        await hub.add(conn, request.ctx.push_from)
        _arm_expiry(conn, principal.expires_at)
        await Session(ctx, conn, inbox).run()
    except (ConnectionClosed, asyncio.CancelledError):
        pass
    except Exception:
        log.exception("websocket handler failed (request %s)", request_id)
        CLOSES.labels(str(int(CloseCode.INTERNAL_ERROR))).inc()
        with contextlib.suppress(Exception):
            await transport.close(CloseCode.INTERNAL_ERROR, f"internal error; request id {request_id}"[:120])
    finally:
        if conn is not None:
            hub.remove(conn)
            conn.stop()


def _arm_expiry(conn: Connection, expires_at: int) -> None:
    if conn.expiry is not None:
        conn.expiry.cancel()
    loop = asyncio.get_running_loop()
    delay = max(0.0, expires_at - time.time())

    conn.expiry = loop.call_later(delay, conn.close_unauthorized, "token expired; reconnect with a new token")


class Session:
    """The reader loop of one authenticated connection."""

    def __init__(self, ctx: AppContext, conn: Connection, inbox: Inbox) -> None:
        self.inbox = inbox
        self.conn = conn
        self.settings = ctx.settings
        self.messages = ctx.message_sender
        self.recipients = ctx.recipients
        self.hub = ctx.hub
        self.replay = ctx.replay_budget
        self.limiter = ctx.limiter
        self.identity = f"user:{conn.user_id}"
        inbox.handler = self.send_now

    async def run(self) -> None:
        """Read frames until the peer closes. Consecutive ``send`` frames that are already
        queued are rate limited and handed to the writer together."""
        inbox = self.inbox
        conn = self.conn
        limit = self.settings.message_body_max_bytes
        post = conn.post
        while True:
            first = await inbox.get()
            if conn.ended:
                # The session ended: nothing read from now on is acted upon.
                await conn.wait_closed()
                return
            if first is None:
                continue
            burst = [first, *inbox.take_ready(BURST - 1)]
            sends: list[Send] = []
            for text in burst:
                if conn.ended:
                    break
                try:
                    frame = parse_frame(text, limit)
                except FrameError as exc:
                    post(error_frame(exc.code, exc.message, exc.message_id))
                    continue
                if isinstance(frame, Send):
                    sends.append(frame)
                    continue
                if sends:
                    await self.send(sends)
                    sends = []
                try:
                    if isinstance(frame, Sync):
                        await self.sync(frame.since)
                    elif isinstance(frame, Delivered):
                        await self.delivered(frame.message_id)
                    elif isinstance(frame, Auth) and not await self.renew(frame.token):
                        return
                except FrameError as exc:
                    post(error_frame(exc.code, exc.message, exc.message_id))
            if sends:
                await self.send(sends)

    async def send(self, sends: list[Send]) -> None:
        """Spend the sender's budget for ``sends`` (all at once when it allows) and queue them."""
        conn = self.conn
        if self.hub.closing:
            for frame in sends:
                stopping = "the server is shutting down; resend"
                conn.post(error_frame(WsError.SERVICE_UNAVAILABLE, stopping, frame.message_id))
            return
        rate = self.settings.ws_rate_limit
        admitted = sends
        decision = await self.limiter.hit(Bucket.WS_SEND, self.identity, rate, len(sends))
        if not decision.allowed:
            admitted = []
            for index, frame in enumerate(sends):
                if len(sends) > 1:
                    decision = await self.limiter.hit(Bucket.WS_SEND, self.identity, rate)
                if not decision.allowed:
                    for refused in sends[index:]:
                        conn.post(rate_limited_frame(rate, refused.message_id, decision.retry_after))
                    break
                admitted.append(frame)
        for frame in admitted:
            if conn.ended:  # the session ended while this batch waited on the limiter or a lookup
                return
            recipient_id = self.recipients.cached(frame.to)
            if recipient_id is None:
                recipient_id = await self.recipients.user_id(frame.to)
                if recipient_id is None:
                    conn.post(error_frame(WsError.UNKNOWN_RECIPIENT, "no such recipient", frame.message_id))
                    continue
                if conn.ended:
                    return
            self._submit(frame, recipient_id)

    def send_now(self, text: str | bytes) -> bool:
        """The inbox's fast path: queue a ``send`` at once when no check needs I/O.

        False (the reader loop then handles the frame) for anything else: other
        frame types, bad frames, a recipient not in the cache, limits in Redis,
        shutdown. Every check comes before the only side effect (the submit).
        """
        if self.conn.ended:
            return True  # dropped: the session ended
        if self.hub.closing or not isinstance(text, str):
            return False
        try:
            frame = parse_frame(text, self.settings.message_body_max_bytes)
        except FrameError:
            return False
        if not isinstance(frame, Send):
            return False
        recipient_id = self.recipients.cached(frame.to)
        if recipient_id is None:
            return False
        rate = self.settings.ws_rate_limit
        decision = self.limiter.hit_now(Bucket.WS_SEND, self.identity, rate)
        if decision is None:
            return False
        if decision.allowed:
            self._submit(frame, recipient_id)
        else:
            self.conn.post(rate_limited_frame(rate, frame.message_id, decision.retry_after))
        return True

    def _submit(self, frame: Send, recipient_id: int) -> None:
        conn = self.conn
        self.messages.submit(
            Sender(conn.user_id, conn.username, conn.session_id),
            frame.message_id,
            frame.to,
            recipient_id,
            frame.body,
            functools.partial(_answer, conn, frame.message_id),
        )

    async def sync(self, since: int) -> None:
        """Replay in pages of :data:`SYNC_PAGE`, each read only once the previous one is in the
        socket: a client that does not read holds one page and its outbox, never its history."""
        conn = self.conn
        half = conn.outbox_limit // 2
        upto = since
        while True:
            # The user's replay budget is shared by its connections: in debt, wait first.
            while wait := self.replay.wait_seconds(conn.user_id):
                await asyncio.sleep(wait)
                if conn.ended:
                    return
            rows = await service.history(conn.user_id, upto, SYNC_PAGE)
            replayed = 0
            for row in rows:
                text = message_frame(row)
                replayed += len(text)
                conn.post(text)
                if conn.outbox_bytes > half:
                    await conn.drained()
            if rows:
                upto = rows[-1].seq
            # A replay costs the connection's frame budget by its size (one frame a row and
            # one a KiB), so repeated syncs of a long history are paced like a frame flood.
            cost = len(rows) + replayed / SYNC_BYTES_PER_FRAME
            self.replay.spend(conn.user_id, cost)
            pause = self.inbox.spend(cost)
            if len(rows) < SYNC_PAGE:
                break
            await conn.drained()
            if pause:
                await asyncio.sleep(pause)
            if conn.ended:
                return
        conn.post(synced_frame(upto))
        if pause:  # this connection's next frame waits until the replay is paid for
            await asyncio.sleep(pause)

    async def delivered(self, message_id: str) -> None:
        if not await service.mark_delivered(message_id, self.conn.user_id):
            raise FrameError(WsError.NOT_FOUND, "no such message for you", message_id)

    async def renew(self, token: str) -> bool:
        """In-band re-authentication; False when the connection was closed."""
        try:
            principal = await verified_principal(token)
            if principal.user_id != self.conn.user_id:
                raise Unauthenticated("the token is for another user")
        except Unauthenticated as exc:
            if self.conn.expiry is not None:
                self.conn.expiry.cancel()
            self.conn.close_unauthorized(str(exc))
            await self.conn.wait_closed()
            return False
        if self.conn.ended:  # ended while the token was being checked
            return False
        self.conn.session_id = principal.session_id
        _arm_expiry(self.conn, principal.expires_at)
        return True


def _answer(conn: Connection, message_id: str, outcome: Outcome) -> None:
    if isinstance(outcome, SendResult):
        conn.post(ack_frame(outcome.message_id, outcome.seq, outcome.server_ts, outcome.duplicate))
    else:
        conn.post(error_frame(outcome.code, outcome.message, message_id))
