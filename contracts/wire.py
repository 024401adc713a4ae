"""Small black-box helpers for the contract suite: WebSocket frames, polling, JWT parts.

Only ``websockets`` and ``httpx``; nothing from ``nexo``. The tests are plain
synchronous pytest functions that run their WebSocket parts with
``asyncio.run``, so the suite needs no pytest plugins when run from an
installed package (``nexo contracts``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

#: docs/messaging.md "Connecting": bad tokens are accepted, then closed with this code.
CLOSE_UNAUTHORIZED = 4401


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def open_ws(ws_url: str, token: str | None, timeout: float) -> ClientConnection:
    """Open ``/ws`` with ``Authorization: Bearer`` (or no header when ``token`` is None)."""
    headers = bearer(token) if token is not None else None
    try:
        return await connect(
            ws_url, additional_headers=headers, open_timeout=timeout, max_size=2**22, ping_interval=None
        )
    except InvalidStatus as exc:
        raise AssertionError(
            f"/ws refused the upgrade with HTTP {exc.response.status_code}; "
            "docs/messaging.md: accept the upgrade, then close with 4401"
        ) from None


async def frame(
    ws: ClientConnection, timeout: float, want: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The next JSON frame for which ``want`` holds (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching frame within {timeout:.1f} s")
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            raise AssertionError(f"no matching frame within {timeout:.1f} s") from None
        except ConnectionClosed as exc:
            raise AssertionError(f"the server closed the connection ({_describe(exc)})") from None
        data = json.loads(raw)
        if isinstance(data, dict) and want(data):
            return data


async def frames_for(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every JSON frame that arrives in the next ``seconds`` (stops early if the socket closes)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except (TimeoutError, ConnectionClosed):
            break
        data = json.loads(raw)
        if isinstance(data, dict):
            got.append(data)
    return got


async def close_of(ws: ClientConnection, timeout: float) -> tuple[int | None, str]:
    """Wait for the server to close; return (code, reason). Data frames before it are ignored."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason
    await ws.close()
    raise AssertionError(f"the server kept the connection open for {timeout:.1f} s")


def _describe(exc: ConnectionClosed) -> str:
    return f"code {exc.rcvd.code} {exc.rcvd.reason!r}" if exc.rcvd else "no close frame"


def send_frame(to: str, body: str, message_id: str | None = None) -> dict[str, Any]:
    return {"type": "send", "message_id": message_id or str(uuid.uuid4()), "to": to, "body": body}


def is_ack(message_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def want(data: dict[str, Any]) -> bool:
        if data.get("type") == "error":
            raise AssertionError(f"server answered with an error frame: {data}")
        return data.get("type") == "ack" and (message_id is None or data.get("message_id") == message_id)

    return want


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns something truthy or ``timeout`` passes; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(header, claims, signature part) of a JWT, without verifying it."""
    header, claims, signature = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(claims)), signature


def jwt_encode(header: dict[str, Any], claims: dict[str, Any], signature: str) -> str:
    def part(obj: dict[str, Any]) -> str:
        return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())

    return f"{part(header)}.{part(claims)}.{signature}"


def get_json(client: httpx.Client, url: str, **kwargs: Any) -> Any:
    response = client.get(url, **kwargs)
    assert response.status_code == 200, f"GET {url} -> {response.status_code} {response.text[:200]}"
    return response.json()
