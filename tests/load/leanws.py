"""A lean RFC 6455 client for load generation only (tests use the ``websockets`` library).

The ``websockets`` client costs about as much CPU per message as the server,
so on a 2-core machine it, not the server, would set the benchmark's ceiling.
This client writes many frames in one ``transport.write``, parses the small
unmasked server frames by hand, and masks with an all-zero key (valid per
RFC 6455 §5.3, which only asks that the key be unpredictable to defeat proxy
cache poisoning — irrelevant on 127.0.0.1; the server still runs its unmasking).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable
from urllib.parse import urlparse

_ZERO_MASK = b"\x00\x00\x00\x00"


def encode_text(text: str) -> bytes:
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x81, 0x80 | 127)) + struct.pack("!Q", n)
    return head + _ZERO_MASK + payload


class LeanClient(asyncio.Protocol):
    """Connect with :meth:`open`; ``on_text`` gets every text frame; ``send`` writes at once."""

    def __init__(self, on_text: Callable[[str], None]) -> None:
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._handshake: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[tuple[int, str]] | None = None

    @classmethod
    async def open(cls, ws_url: str, headers: dict[str, str], on_text: Callable[[str], None]) -> LeanClient:
        url = urlparse(ws_url)
        loop = asyncio.get_running_loop()
        client = cls(on_text)
        client._handshake = loop.create_future()
        client.closed = loop.create_future()
        await loop.create_connection(lambda: client, url.hostname, url.port or 80)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {url.path or '/'} HTTP/1.1",
            f"Host: {url.hostname}:{url.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        assert client.transport is not None
        client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await asyncio.wait_for(client._handshake, 10)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result((1006, "connection lost"))
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionError("closed during handshake"))

    def send(self, texts: list[str]) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(encode_text(t) for t in texts))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.write(bytes((0x88, 0x82)) + _ZERO_MASK + struct.pack("!H", 1000))

    def data_received(self, data: bytes) -> None:
        buf = self._buffer + data
        if self._handshake is not None and not self._handshake.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 101 " not in status:
                self._handshake.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self._handshake.set_result(None)
            buf = buf[end + 4 :]
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if size - pos < head + n:
                break
            payload = buf[pos + head : pos + head + n]
            pos += head + n
            opcode = b0 & 0x0F
            if opcode == 1:
                self.on_text(payload.decode())
            elif opcode == 9 and self.transport is not None:  # ping → pong
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + _ZERO_MASK + payload)
            elif opcode == 8:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                if self.closed is not None and not self.closed.done():
                    self.closed.set_result((code, payload[2:].decode(errors="replace")))
        self._buffer = buf[pos:]
