"""NexoClient: sessions, device identity, verified keys, encryption and the exactly-once outbox.

Sending: :meth:`NexoClient.send` verifies the recipient's keys against the log,
encrypts and signs, and stores the envelope in the outbox with its ``message_id``
in one transaction; the connection task sends it, and resends it with the same
id (same bytes) after every reconnect or ack timeout, until the server's ack
removes it. Receiving: each ``message`` frame is verified and decrypted, handed
to the handler, then its ``seq`` is recorded (and the cursor moved) and
``delivered`` is sent; a seq already recorded is never handed over again, and
after a reconnect the client ``sync``s from the persisted cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from . import envelope
from .errors import (
    AuthError,
    EnvelopeInvalid,
    NoDevices,
    NotLoggedIn,
    ServerError,
    ServerUnavailable,
    StateError,
    VerificationFailed,
)
from .identity import DeviceKeys
from .log import Witness, b64e
from .session import Session
from .store import OutboxItem, Store
from .verify import LogVerifier, Lookup, VerifiedKey

log = logging.getLogger("nexo_client")

#: Send errors after which resending the same message can never succeed.
PERMANENT_ERRORS = {"message_id_conflict", "unknown_recipient", "body_too_large", "invalid_field",
                    "invalid_message_id"}


@dataclass(frozen=True)
class Message:
    """A received message, verified and decrypted."""

    message_id: str
    seq: int
    sender: str
    sender_device: str
    to: str
    text: str
    server_ts: int


Handler = Callable[[Message], Awaitable[None]]


class SendFailed(ServerError):
    """The server refused a queued message for good (it left the outbox)."""


class NexoClient:
    """One account's device on one Nexo server, kept in ``state_dir``.

    Use as ``async with NexoClient(server, state_dir, username=..., password=...) as client``:
    entering logs in if the state has no session (and registers the device keys if
    needed) and starts the connection; leaving stops it (the outbox stays on disk).
    """

    def __init__(
        self,
        server: str,
        state_dir: str | Path,
        *,
        username: str | None = None,
        password: str | None = None,
        device_name: str = "nexo-client",
        witnesses: Sequence[Witness | str] = (),
        witness_quorum: int | None = None,
        key_cache_seconds: float = 10.0,
        ack_timeout: float = 5.0,
        sync_interval: float = 15.0,
        reconnect_base: float = 0.25,
        reconnect_max: float = 10.0,
        http_timeout: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        self.store = Store(state_dir)
        self.session = Session(self.server, self.store, timeout=http_timeout)
        parsed = [w if isinstance(w, Witness) else Witness.parse(w) for w in witnesses]
        self.verifier = LogVerifier(self.session, self.store, parsed, witness_quorum)
        self.device_name = device_name
        self.key_cache_seconds = key_cache_seconds
        self.ack_timeout = ack_timeout
        self.sync_interval = sync_interval
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        self._credentials = (username, password)
        self._handler: Handler | None = None
        self._cache: dict[str, tuple[float, list[VerifiedKey]]] = {}
        self._cache_locks: dict[str, asyncio.Lock] = {}
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._fatal: BaseException | None = None
        self._changed = asyncio.Event()
        self._sent_at: dict[str, float] = {}
        self._force_refresh = False
        self.failures: dict[str, ServerError] = {}
        self.rejected: list[tuple[int, str]] = []
        self.handled_count = 0
        self.connects = 0
        self._account_checked = False

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> NexoClient:
        username, password = self._credentials
        if self.store.get("session") is None and username and password:
            await self.login(username, password)
        if self.store.get("session") is not None:
            await self.ensure_device()
            self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the connection task (reconnects by itself until :meth:`close`)."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="nexo-client-connection")

    async def close(self) -> None:
        self._closing = True
        self._changed.set()
        if self._task is not None:
            if self._ws is not None:
                with contextlib.suppress(Exception):
                    await self._ws.close()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.session.close()
        self.store.close()

    @property
    def username(self) -> str:
        account = self.store.get("account")
        if account is None:
            raise NotLoggedIn("not logged in: run `nexo-client login USER` first")
        return str(account["username"])

    # -- accounts and the device ------------------------------------------------------------

    async def register(self, username: str, password: str) -> None:
        """Create the account, log in, and register this device's keys."""
        self._check_account(username)
        await self.session.register(username, password)
        await self.login(username, password)

    async def login(self, username: str, password: str) -> None:
        self._check_account(username)
        await self.session.login(username, password)
        me = await self.session.json("GET", "/api/me")
        self.store.put("account", {"server": self.server, "username": me.get("username", username.lower()),
                                   "user_id": me.get("id")})
        await self.ensure_device()

    async def logout(self) -> None:
        await self.session.logout()

    def _check_account(self, username: str) -> None:
        account = self.store.get("account")
        mine = (username.lower(), self.server)
        if account is not None and (account["username"], account["server"]) != mine:
            raise StateError(
                f"{self.store.dir} belongs to {account['username']} on {account['server']}; "
                "use another --state-dir"
            )

    async def ensure_device(self) -> dict[str, Any]:
        """This device's keys: made on first use (0600) and registered in the log, proofs checked."""
        device = self.store.get("device")
        if device is not None:
            return dict(device)
        stored = self.store.load_identity()
        keys = DeviceKeys.from_json(stored) if stored else DeviceKeys.generate()
        if stored is None:
            self.store.save_identity(keys.to_json())
        device = {}
        for key_type, public in (("ed25519", keys.signing_public), ("x25519", keys.encryption_public)):
            answer = await self.session.json("POST", "/api/devices", json={
                "name": self.device_name, "public_key": b64e(public), "key_type": key_type,
            })
            lookup = await self.verifier.verify_registration(answer, public, key_type)
            self.verifier.commit(lookup.head)
            device[key_type] = {"id": answer["device"]["id"], "leaf_index": answer["log"]["leaf_index"]}
        self.store.put("device", device)
        return device

    def _keys(self) -> DeviceKeys:
        stored = self.store.load_identity()
        if stored is None:
            raise NotLoggedIn("this state directory has no device keys: log in first")
        return DeviceKeys.from_json(stored)

    async def devices(self) -> list[dict[str, Any]]:
        """The account's devices as the server lists them (revoked ones included)."""
        devices: list[dict[str, Any]] = (await self.session.json("GET", "/api/devices"))["devices"]
        return devices

    async def revoke_device(self, device_id: str) -> None:
        await self.session.call("DELETE", f"/api/devices/{device_id}")

    # -- verified keys ----------------------------------------------------------------------

    async def keys_of(self, username: str, *, fresh: bool = False) -> list[VerifiedKey]:
        """Active keys of ``username``, each proven in the log (cached ``key_cache_seconds``)."""
        username = username.lower()
        lock = self._cache_locks.setdefault(username, asyncio.Lock())
        async with lock:
            cached = self._cache.get(username)
            if cached and not fresh and time.monotonic() - cached[0] < self.key_cache_seconds:
                return cached[1]
            lookup, keys = await self.verifier.user_keys(username)
            self.verifier.commit(lookup.head)
            self._cache[username] = (time.monotonic(), keys)
            return keys

    async def verify(self, username: str) -> dict[str, Any]:
        """A fresh, fully checked lookup of ``username``'s keys, as a report."""
        previous = self.verifier.trusted()
        lookup, keys = await self.verifier.user_keys(username)
        self.verifier.commit(lookup.head)
        self._cache[username.lower()] = (time.monotonic(), keys)
        report = _report(username, lookup, keys, previous)
        if not self.verifier.witnesses:
            report["unchecked_cosigners"] = await self.verifier.cosigner_names()
        return report

    # -- sending ----------------------------------------------------------------------------

    async def send(self, to: str, text: str) -> str:
        """Encrypt ``text`` for ``to`` (and this account's other devices) and queue it.

        Returns the ``message_id`` at once; the message is on disk and will be
        sent until acked. Raises a :class:`VerificationFailed` (nothing queued,
        nothing sent) when a key cannot be verified.
        """
        to = to.lower()
        device = await self.ensure_device()
        recipients = [k for k in await self.keys_of(to) if k.key_type == "x25519"]
        if not recipients:
            raise NoDevices(f"{to} has no device with an encryption key yet")
        me = self.username
        if to != me:
            recipients += [k for k in await self.keys_of(me) if k.key_type == "x25519"]
        recipients = [k for k in recipients if k.device_id != device["x25519"]["id"]]
        message_id = str(uuid.uuid4())
        body = envelope.seal(
            text, message_id=message_id, to=to, sender_user=me, sender_device=device["ed25519"]["id"],
            signing_key=self._keys().signing, recipients=[(k.device_id, k.public_key) for k in recipients],
        )
        item = OutboxItem(message_id, to, body)
        self.store.queue(item)
        await self._transmit(item)
        return message_id

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until the outbox is empty (every message acked); TimeoutError otherwise."""
        await self._wait_until(lambda: not self.store.pending(), timeout,
                               lambda: f"{len(self.store.pending())} message(s) not acked within {timeout} s")
        self._raise_fatal()

    async def wait_acked(self, message_id: str, timeout: float = 30.0) -> None:
        """Wait for the ack of ``message_id``; TimeoutError (it stays queued) or its SendFailed."""
        await self._wait_until(lambda: not self.store.is_pending(message_id), timeout,
                               lambda: f"message {message_id} not acked within {timeout} s (it stays queued)")
        if message_id in self.failures:
            raise self.failures[message_id]

    async def _wait_until(self, done: Callable[[], bool], timeout: float, late: Callable[[], str]) -> None:
        """Wake on every change (ack, handled message, fatal error) until ``done()``."""
        deadline = time.monotonic() + timeout
        while not done():
            self._raise_fatal()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(late())
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def _transmit(self, item: OutboxItem) -> None:
        ws = self._ws
        if ws is None:
            return
        self._sent_at[item.message_id] = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(envelope.canonical(
                {"type": "send", "message_id": item.message_id, "to": item.recipient, "body": item.body}
            ).decode())

    # -- receiving --------------------------------------------------------------------------

    def on_message(self, handler: Handler) -> Handler:
        """Set the handler (usable as a decorator). Without one, messages wait on the server."""
        self._handler = handler
        return handler

    async def listen(
        self, handler: Handler, *, count: int | None = None, timeout: float | None = None
    ) -> int:
        """Hand messages to ``handler`` until ``count`` were handled or ``timeout`` passed."""
        start = self.handled_count
        self.on_message(handler)
        self.start()
        if self._ws is not None:
            await self._ws.send(envelope.canonical({"type": "sync", "since": self.store.cursor()}).decode())
        deadline = None if timeout is None else time.monotonic() + timeout
        while count is None or self.handled_count - start < count:
            self._raise_fatal()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0 if left is None else min(left, 1.0))
        return self.handled_count - start

    async def _incoming(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        handler = self._handler
        if handler is None:
            return  # not consumed: it stays on the server for the next sync
        seq, me = int(frame["seq"]), self.username
        to_me = frame.get("to") == me
        if seq <= self.store.cursor() or self.store.was_handled(seq, str(frame["message_id"])):
            if to_me:
                await _delivered(ws, str(frame["message_id"]))
            return
        try:
            message = await self._open(frame, me)
        except EnvelopeInvalid as exc:
            log.warning("rejected message seq %s from %s: %s", seq, frame.get("from"), exc)
            self.rejected.append((seq, str(exc)))
            self.store.mark_handled(seq, str(frame["message_id"]))
            return
        if message is not None:
            await handler(message)
            self.handled_count += 1
        self.store.mark_handled(seq, str(frame["message_id"]))
        self._changed.set()
        if to_me:
            await _delivered(ws, str(frame["message_id"]))

    async def _open(self, frame: dict[str, Any], me: str) -> Message | None:
        doc = envelope.parse(str(frame.get("body", "")))
        sender = str(frame["from"])
        claimed = (doc["message_id"], doc["sender"]["user"], doc["to"])
        if claimed != (frame["message_id"], sender, frame["to"]):
            raise EnvelopeInvalid("envelope does not match the message it came in (id, sender or recipient)")
        device = self.store.get("device")
        mine = device["x25519"]["id"]
        if sender == me and doc["sender"]["device"] == device["ed25519"]["id"]:
            return None  # our own message, echoed back by sync
        sender_key = await self._sender_key(sender, str(doc["sender"]["device"]))
        opened = envelope.open_envelope(doc, sender_key=sender_key, device=mine,
                                        private_key=self._keys().encryption)
        return Message(opened.message_id, int(frame["seq"]), sender, opened.sender_device, opened.to,
                       opened.text, int(frame.get("server_ts", 0)))

    async def _sender_key(self, sender: str, device_id: str) -> bytes:
        for fresh in (False, True):
            for key in await self.keys_of(sender, fresh=fresh):
                if key.device_id == device_id and key.key_type == "ed25519":
                    return key.public_key
        raise EnvelopeInvalid(f"sender device {device_id} is not an active, logged key of {sender}")

    # -- the connection ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        ws_url = "ws" + self.server[self.server.index(":"):] + "/ws"
        while not self._closing:
            try:
                token = await self.session.access_token(force=self._force_refresh)
                self._force_refresh = False
                async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                   ping_interval=20, open_timeout=10, max_size=2**22) as ws:
                    attempt = 0
                    await self._serve(ws)
            except (AuthError, VerificationFailed, StateError) as exc:
                self._fatal = exc
                self._changed.set()
                return
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 4401:
                    self._force_refresh = True
            except (OSError, TimeoutError, InvalidHandshake, ServerUnavailable, ValueError) as exc:
                log.debug("connection failed: %r", exc)
            except Exception as exc:
                # The application's handler raised: its message stays unrecorded (it is handed
                # over again after a restart) and listen()/flush() re-raise the error.
                log.exception("the message handler failed")
                self._fatal = exc
                self._changed.set()
                return
            finally:
                self._ws = None
            if self._closing:
                return
            # Exponential backoff with full jitter (AWS architecture blog), capped.
            delay = random.uniform(0, min(self.reconnect_max, self.reconnect_base * 2**attempt))
            attempt = min(attempt + 1, 16)
            await asyncio.sleep(delay)

    async def _serve(self, ws: ClientConnection) -> None:
        import json

        self.connects += 1
        if self._handler is not None:  # without one there is nothing to consume yet
            await ws.send(envelope.canonical({"type": "sync", "since": self.store.cursor()}).decode())
        self._ws = ws
        for item in self.store.pending():
            await self._transmit(item)
        helpers = [asyncio.create_task(self._renew(ws)), asyncio.create_task(self._resend(ws)),
                   asyncio.create_task(self._sync_every(ws))]
        try:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "ack":
                    self.store.acked(str(frame["message_id"]))
                    self._sent_at.pop(str(frame["message_id"]), None)
                    self._changed.set()
                elif kind == "message":
                    await self._incoming(ws, frame)
                elif kind == "synced" and self._handler is not None:
                    # Every replayed message before this frame was processed (inline, in order).
                    self.store.advance_cursor(int(frame["upto"]))
                elif kind == "error" and frame.get("message_id"):
                    self._send_error(frame)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self._ws = None

    def _send_error(self, frame: dict[str, Any]) -> None:
        message_id = str(frame["message_id"])
        if frame.get("code") in PERMANENT_ERRORS and self.store.is_pending(message_id):
            self.failures[message_id] = SendFailed(400, str(frame["code"]), str(frame.get("message", "")))
            self.store.acked(message_id)
            self._changed.set()
        elif frame.get("code") == "rate_limited":
            self._sent_at[message_id] = time.monotonic() + float(frame.get("retry_after", 1))

    async def _resend(self, ws: ClientConnection) -> None:
        """Resend what stays unacked for ``ack_timeout`` on a live connection (a lost ack)."""
        while True:
            await asyncio.sleep(min(1.0, self.ack_timeout))
            now = time.monotonic()
            for item in self.store.pending():
                if now - self._sent_at.get(item.message_id, 0.0) >= self.ack_timeout:
                    await self._transmit(item)

    async def _sync_every(self, ws: ClientConnection) -> None:
        """Sync now and then: the server pushes only to recipients, so what this account's
        other devices sent arrives here by ``sync``."""
        while True:
            await asyncio.sleep(self.sync_interval)
            if self._handler is not None:
                await ws.send(envelope.canonical({"type": "sync", "since": self.store.cursor()}).decode())

    async def _renew(self, ws: ClientConnection) -> None:
        """Refresh the access token before it expires and re-authenticate in band."""
        while True:
            await asyncio.sleep(max(0.5, self.session.seconds_left() - self.session.refresh_margin()))
            token = await self.session.access_token()
            await ws.send(envelope.canonical({"type": "auth", "token": token}).decode())


async def _delivered(ws: ClientConnection, message_id: str) -> None:
    await ws.send(envelope.canonical({"type": "delivered", "message_id": message_id}).decode())


def _report(username: str, lookup: Lookup, keys: list[VerifiedKey], previous: Any) -> dict[str, Any]:
    head = lookup.head
    return {
        "user": username.lower(),
        "devices": [
            {"device_id": k.device_id, "name": k.name, "key_type": k.key_type,
             "public_key": b64e(k.public_key), "leaf_index": k.leaf_index, "inclusion": "verified"}
            for k in keys
        ],
        "sth": {"index": head.index, "tree_size": head.tree_size, "root_hash": b64e(head.root_hash),
                "sth_hash": b64e(head.sth_hash), "signature": "verified"},
        "consistency": (
            "first tree head seen (trusted on first use)" if previous is None
            else "consistent with the last verified tree head "
            f"(index {previous.index}, size {previous.tree_size})"
        ),
        "cosignatures": lookup.cosigned_by,
    }
