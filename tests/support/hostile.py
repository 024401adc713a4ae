"""Hostile WebSocket clients for the tests: a socket that never reads, raw frames, server RSS.

A :class:`NonReader` does the upgrade by hand on a socket with a small receive buffer,
reads the 101 answer and then never reads again, so everything the server pushes piles
up in the server's send buffer. Its TCP state (``TCP_INFO``) tells whether the server
has dropped it: a server that aborts sends an RST at once, while a FIN would wait behind
the unread data forever.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from pathlib import Path
from urllib.parse import urlparse

from contracts.server import LocalServer

TCP_ESTABLISHED = 1


class NonReader:
    """A WebSocket client that reads nothing after the handshake."""

    def __init__(self, server: LocalServer, token: str | None, rcvbuf: int = 4096) -> None:
        url = urlparse(server.base_url)
        self.server_port = int(url.port or 80)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((url.hostname or "127.0.0.1", self.server_port))
        self.local_port = self.sock.getsockname()[1]
        key = base64.b64encode(os.urandom(16)).decode()
        auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.server_port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{auth}\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            head += chunk
        self.status = head.split(b"\r\n", 1)[0].decode(errors="replace")

    @property
    def upgraded(self) -> bool:
        return " 101 " in self.status

    def tcp_state(self) -> int:
        return self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]

    def is_open(self) -> bool:
        return self.tcp_state() == TCP_ESTABLISHED

    def wait_dropped(self, timeout: float) -> float | None:
        """Seconds until the server dropped the connection, or None if it is still open."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.is_open():
                return time.monotonic() - start
            time.sleep(0.02)
        return None

    def send_text(self, text: str) -> bool:
        """Write one masked text frame; False if the socket refused it."""
        try:
            self.sock.sendall(_masked(text.encode()))
        except OSError:
            return False
        return True

    def send_many(self, text: str, count: int) -> bool:
        """Write ``count`` copies of one masked text frame in one go."""
        frame = _masked(text.encode())
        self.sock.settimeout(3)  # a server that stops reading (backpressure) does not hang the test
        try:
            self.sock.sendall(frame * count)
        except OSError:
            return False
        finally:
            self.sock.settimeout(10)
        return True

    def server_send_queue(self) -> int:
        """Bytes the server has queued towards this socket (its kernel send queue)."""
        return _tx_queue(self.server_port, self.local_port)

    def wait_server_backlog(self, timeout: float) -> bool:
        """True once the server has unsent bytes queued towards this socket."""
        deadline = time.monotonic() + timeout
        while self.server_send_queue() == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def _masked(payload: bytes) -> bytes:
    """One masked client text frame (RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _tx_queue(local_port: int, remote_port: int) -> int:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
            return int(queues.split(":")[0], 16)
    return 0


def server_rss(server: LocalServer) -> int:
    """Resident bytes of the server and all its worker processes (from /proc)."""
    assert server.process is not None
    total = 0
    for pid in _tree(server.process.pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found
