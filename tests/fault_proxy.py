"""A reverse proxy in front of a real Nexo that breaks exactly one runbook promise.

Test harness for ``tests/test_contracts_fail.py``: the contract suite is aimed
at this proxy with ``--base-url`` and must fail on the promise the fault breaks
(and pass with ``--fault none``). HTTP is forwarded with httpx, ``/ws`` frame by
frame with websockets; the fault rewrites what the client sees.

    python -m tests.fault_proxy --upstream http://127.0.0.1:5000 --port 5001 --fault ws_close_1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
from typing import Any

import httpx
from sanic import Request, Sanic
from sanic.response import HTTPResponse, raw
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

FAULTS = {
    "none": "forward everything unchanged",
    "ws_close_1000": "close with 1000 where the server closed with 4401",
    "health_slow": "answer /api/health 400 ms late",
    "health_missing_field": "drop sth_count from /api/health",
    "dup_new_seq": "ack a duplicate with a new seq",
    "ack_reused_seq": "ack every message on a connection with the first ack's seq",
    "no_429": "turn 429 into 200 (no rate limit)",
    "sth_bad_signature": "corrupt the signature of every STH after the first",
    "sth_index_skip": "make STH indexes after the first skip one",
}
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


def _mutate_sths(data: Any, fault: str) -> Any:
    """Apply an STH fault to every STH object anywhere in a JSON document."""
    if isinstance(data, list):
        return [_mutate_sths(item, fault) for item in data]
    if not isinstance(data, dict):
        return data
    data = {key: _mutate_sths(value, fault) for key, value in data.items()}
    if {"index", "signature", "sth_hash"} <= set(data) and int(data["index"]) >= 1:
        if fault == "sth_bad_signature":
            signature = bytearray(base64.b64decode(data["signature"]))
            signature[0] ^= 0xFF
            data["signature"] = base64.b64encode(bytes(signature)).decode()
        elif fault == "sth_index_skip":
            data["index"] = int(data["index"]) + 1
    return data


def create_proxy(upstream: str, fault: str) -> Sanic:
    app = Sanic("fault_proxy")
    app.config.ACCESS_LOG = False
    app.config.WEBSOCKET_PING_INTERVAL = None
    ws_upstream = "ws" + upstream[upstream.index(":") :].rstrip("/") + "/ws"

    @app.before_server_start
    async def open_client(app: Sanic) -> None:
        app.ctx.http = httpx.AsyncClient(base_url=upstream, timeout=30)

    @app.after_server_stop
    async def close_client(app: Sanic) -> None:
        await app.ctx.http.aclose()

    @app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    async def forward(request: Request, path: str) -> HTTPResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        response = await app.ctx.http.request(
            request.method,
            "/" + path,
            params=request.query_string or None,
            headers=headers,
            content=request.body,
        )
        status, body = response.status_code, response.content
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
        if path == "api/health":
            if fault == "health_slow":
                await asyncio.sleep(0.4)
            if fault == "health_missing_field":
                doc = response.json()
                doc.pop("sth_count", None)
                body = json.dumps(doc).encode()
        if fault == "no_429" and status == 429:
            status = 200
            out_headers = {k: v for k, v in out_headers.items() if k.lower() != "retry-after"}
        if fault.startswith("sth_") and response.headers.get("content-type", "").startswith(
            "application/json"
        ):
            body = json.dumps(_mutate_sths(response.json(), fault)).encode()
        return raw(
            body, status=status, headers=out_headers, content_type=response.headers.get("content-type")
        )

    @app.websocket("/ws")
    async def relay(request: Request, client: Any) -> None:
        headers = (
            {"Authorization": request.headers["authorization"]}
            if "authorization" in request.headers
            else None
        )
        try:
            server = await connect(
                ws_upstream, additional_headers=headers, ping_interval=None, max_size=2**22
            )
        except (InvalidStatus, OSError) as exc:
            await client.close(1011, f"upstream: {exc}")
            return
        seen: set[str] = set()
        first_seq: list[int] = []

        async def client_to_server() -> None:
            while True:
                message = await client.recv()
                if message is None:
                    return
                await server.send(message)

        async def server_to_client() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in server:
                    frame = json.loads(message) if fault in {"dup_new_seq", "ack_reused_seq"} else {}
                    if frame.get("type") == "ack":
                        if fault == "dup_new_seq" and frame["message_id"] in seen:
                            frame["seq"] = int(frame["seq"]) + 1_000_000
                        seen.add(frame["message_id"])
                        if fault == "ack_reused_seq":
                            first_seq[:] = first_seq or [frame["seq"]]
                            frame["seq"] = first_seq[0]
                        message = json.dumps(frame)
                    await client.send(message)

        tasks = [asyncio.create_task(client_to_server()), asyncio.create_task(server_to_client())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        code, reason = server.close_code, server.close_reason or ""
        await server.close()
        if code is None:  # the client went first
            return
        if fault == "ws_close_1000" and code == 4401:
            code = 1000
        await client.close(code, reason)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fault", choices=sorted(FAULTS), default="none")
    args = parser.parse_args()
    app = create_proxy(args.upstream, args.fault)
    app.run(host="127.0.0.1", port=args.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
