"""A reverse proxy in front of a real Nexo that breaks exactly one runbook promise.

Test harness for ``tests/contracts/test_contracts_fail.py``: the contract suite is aimed
at this proxy with ``--base-url`` and must fail on the promise the fault breaks
(and pass with ``--fault none``). HTTP is forwarded with httpx, ``/ws`` frame by
frame with websockets; the fault rewrites what the client sees.

    python -m tests.support.fault_proxy --upstream http://127.0.0.1:5000 --port 5001 --fault ws_close_1000

``PUT /__proxy/fault/<name>`` switches the fault while running (the browser tests
break a promise and mend it again under one open page).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import struct
import time
from typing import Any

import httpx
from sanic import Request, Sanic
from sanic.response import HTTPResponse, raw
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nexo.realtime.handshake import opaque_header_bytes

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
    # Attacks on the client SDK (tests/client): see the client_* functions below.
    "client_fork_sth": "serve a forked tree head: another root, validly re-signed with --signing-key",
    "client_swap_key": "swap every public key in GET /api/users/*/devices for a random one",
    "client_strip_proof": "strip the audit path from inclusion proofs (and registration answers)",
    "client_cosign": "add a valid cosignature by --witness-key to the checkpoint",
    "client_bad_cosignature": "add a cosignature by --witness-key that does not verify",
    "client_drop_acks": "drop every other ack and reset the WebSocket every few frames",
    "client_replay": "deliver every message frame twice, the copy under a new seq",
    "ack_drop_one_in_ten": "drop every tenth ack on a connection",
    "health_slow_one_connection_in_twenty": "answer /api/health 400 ms late on every twentieth connection",
    "inclusion_wrong": "corrupt the first hash of every inclusion proof (proof endpoint and registrations)",
    "consistency_wrong": "corrupt the first hash of every consistency proof",
    "poison_spreads": "after a send holding \\ud800 or \\u0000, turn the next 5 acks into errors",
    "bad_input_500": "answer 500 where the server refused a request holding a 20-digit number with a 4xx",
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


# -- attacks on the client SDK (tests/client) ----------------------------------------------------


def _load_private_key(path: str | None) -> Any:
    from cryptography.hazmat.primitives import serialization

    if not path:
        raise SystemExit("this fault needs its key file")
    with open(path, "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), password=None)


def client_fork_sth(doc: Any, signing_key: Any) -> Any:
    """Every non-empty STH gets another root, and a valid signature with the log's own key."""
    if isinstance(doc, list):
        return [client_fork_sth(item, signing_key) for item in doc]
    if not isinstance(doc, dict):
        return doc
    doc = {key: client_fork_sth(value, signing_key) for key, value in doc.items()}
    if {"index", "signature", "sth_hash", "root_hash"} <= set(doc) and int(doc["tree_size"]) >= 1:
        root = hashlib.sha256(b"fork" + base64.b64decode(doc["root_hash"])).digest()
        doc["root_hash"] = base64.b64encode(root).decode()
        lines = [
            doc["origin"],
            str(doc["tree_size"]),
            doc["root_hash"],
            str(doc["index"]),
            str(doc["timestamp_ms"]),
            doc["prev_sth_hash"],
        ]
        signed = "".join(line + "\n" for line in lines).encode()
        signature = signing_key.sign(signed)
        doc["signature"] = base64.b64encode(signature).decode()
        doc["sth_hash"] = base64.b64encode(hashlib.sha256(signed + signature).digest()).decode()
    return doc


def client_json_fault(path: str, doc: Any, fault: str, signing_key: Any) -> Any:
    """The JSON attacks on the client: a forked STH, a swapped key, a stripped proof."""
    if fault == "client_fork_sth":
        return client_fork_sth(doc, signing_key)
    if fault == "client_swap_key" and path.startswith("api/users/") and isinstance(doc, dict):
        for device in doc.get("devices", []):
            device["public_key"] = base64.b64encode(secrets.token_bytes(32)).decode()
    if fault == "client_strip_proof" and isinstance(doc, dict):
        if path == "api/log/proof/inclusion":
            doc["audit_path"] = []
        if "inclusion_proof" in doc:
            doc["inclusion_proof"] = []
    return doc


def client_cosign(note: str, witness_key: Any, name: str, valid: bool) -> str:
    """Append a C2SP tlog-cosignature v1 line by ``witness_key`` named ``name`` (or a broken one)."""
    from cryptography.hazmat.primitives import serialization

    body = note.partition("\n\n")[0] + "\n"
    public = witness_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = hashlib.sha256(name.encode() + b"\n\x04" + public).digest()[:4]
    timestamp = int(time.time())
    signature = bytearray(witness_key.sign(b"cosignature/v1\ntime %d\n" % timestamp + body.encode()))
    if not valid:
        signature[0] ^= 0xFF
    blob = key_id + struct.pack(">Q", timestamp) + bytes(signature)
    return note.rstrip("\n") + "\n\u2014 " + name + " " + base64.b64encode(blob).decode() + "\n"


class ClientAckDropper:
    """``client_drop_acks``: drop acks 1, 3, 5, ... and reset the socket after some frames.

    The n-th connection through the proxy is reset after 7 n frames, so a client that
    replays a backlog on every reconnect still gets through it eventually.
    """

    connections = 0

    def __init__(self) -> None:
        ClientAckDropper.connections += 1
        self.reset_after = 7 * ClientAckDropper.connections
        self.acks = 0
        self.frames = 0

    def on_frame(self, message: str) -> tuple[str | None, bool]:
        """(the frame to forward or None, whether to reset the connection after it)."""
        self.frames += 1
        if '"ack"' in message:
            self.acks += 1
            if self.acks % 2:
                return None, False
        return message, self.frames >= self.reset_after


def client_replay(message: str) -> str:
    """The same message frame under another seq (a server delivering one message twice)."""
    frame = json.loads(message)
    frame["seq"] = int(frame["seq"]) + 1_000_000_000
    return json.dumps(frame)


def _reset(client: Any) -> None:
    """Abort the client's TCP connection without a close frame (a network reset)."""
    transport = getattr(getattr(client, "io_proto", None), "transport", None)
    if transport is not None:
        transport.abort()


def _corrupt_first(hashes: Any) -> Any:
    """The list of base64 hashes with one bit of the first flipped (unchanged when empty)."""
    if not isinstance(hashes, list) or not hashes:
        return hashes
    first = bytearray(base64.b64decode(hashes[0]))
    first[0] ^= 0x01
    return [base64.b64encode(bytes(first)).decode(), *hashes[1:]]


def _mutate_proofs(path: str, doc: Any, fault: str) -> Any:
    """``inclusion_wrong`` / ``consistency_wrong`` on a JSON answer."""
    if not isinstance(doc, dict):
        return doc
    if fault == "consistency_wrong" and path == "api/log/proof/consistency":
        doc["consistency_path"] = _corrupt_first(doc.get("consistency_path"))
    if fault == "inclusion_wrong":
        if path == "api/log/proof/inclusion":
            doc["audit_path"] = _corrupt_first(doc.get("audit_path"))
        proof = doc.get("inclusion_proof")
        if isinstance(proof, dict):
            proof["audit_path"] = _corrupt_first(proof.get("audit_path"))
        elif proof is not None:
            doc["inclusion_proof"] = _corrupt_first(proof)
    return doc


WITNESS_NAME = "witness.test/w1"


def create_proxy(
    upstream: str, fault: str, signing_key_file: str | None = None, witness_key_file: str | None = None
) -> Sanic:
    app = Sanic("fault_proxy")
    app.config.ACCESS_LOG = False
    app.config.WEBSOCKET_PING_INTERVAL = None
    ws_upstream = "ws" + upstream[upstream.index(":") :].rstrip("/") + "/ws"
    # Keys load when given (a fault switched on later may need them) or when the fault needs them.
    signing_key = (
        _load_private_key(signing_key_file) if signing_key_file or fault == "client_fork_sth" else None
    )
    witness_key = _load_private_key(witness_key_file) if witness_key_file or "cosign" in fault else None
    app.ctx.fault = fault

    # Forward header bytes as the client sent them (Nexo's own middleware: Sanic reads them as
    # UTF-8, surrogate-escaping the rest, which neither httpx nor the handshake accepts).
    app.on_request(opaque_header_bytes)

    @app.put("/__proxy/fault/<name>")
    async def switch_fault(request: Request, name: str) -> HTTPResponse:
        if name not in FAULTS:
            return raw(b"unknown fault", status=404)
        app.ctx.fault = name
        return raw(name.encode())

    @app.before_server_start
    async def open_client(app: Sanic) -> None:
        app.ctx.http = httpx.AsyncClient(base_url=upstream, timeout=30)

    @app.after_server_stop
    async def close_client(app: Sanic) -> None:
        await app.ctx.http.aclose()

    @app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    async def forward(request: Request, path: str) -> HTTPResponse:
        fault = app.ctx.fault
        headers = {k: v.encode("latin-1") for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
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
            if fault == "health_slow_one_connection_in_twenty":
                conn = request.conn_info.ctx if request.conn_info else None
                if conn is not None and not hasattr(conn, "number"):
                    app.ctx.connections = getattr(app.ctx, "connections", 0) + 1
                    conn.number = app.ctx.connections
                if conn is not None and conn.number % 20 == 0:
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
        if fault.startswith("client_") and response.headers.get("content-type", "").startswith(
            "application/json"
        ):
            body = json.dumps(client_json_fault(path, response.json(), fault, signing_key)).encode()
        if witness_key is not None and "cosign" in fault and path == "api/log/checkpoint" and status == 200:
            body = client_cosign(response.text, witness_key, WITNESS_NAME, fault == "client_cosign").encode()
        if fault == "bad_input_500" and 400 <= status < 500 and "99999999999999999" in request.url:
            status, body = 500, b'{"error": {"code": "internal_error", "message": "internal error"}}'
        if fault.endswith("_wrong") and response.headers.get("content-type", "").startswith(
            "application/json"
        ):
            body = json.dumps(_mutate_proofs(path, response.json(), fault)).encode()
        return raw(
            body, status=status, headers=out_headers, content_type=response.headers.get("content-type")
        )

    @app.websocket("/ws")
    async def relay(request: Request, client: Any) -> None:
        fault = app.ctx.fault
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
        dropper = ClientAckDropper() if fault == "client_drop_acks" else None
        acks = 0
        spoiled = 0  # poison_spreads: acks still to turn into errors

        async def client_to_server() -> None:
            nonlocal spoiled
            while True:
                message = await client.recv()
                if message is None:
                    return
                if fault == "poison_spreads" and ("\\ud800" in message or "\\u0000" in message):
                    spoiled = 5
                await server.send(message)

        async def server_to_client() -> None:
            nonlocal acks, spoiled
            with contextlib.suppress(ConnectionClosed):
                async for message in server:
                    if fault == "client_replay" and '"message"' in str(message):
                        await client.send(message)
                        message = client_replay(str(message))
                    if dropper is not None:
                        forward, reset = dropper.on_frame(str(message))
                        if forward is not None:
                            await client.send(forward)
                        if reset:
                            _reset(client)
                            return
                        continue
                    rewrites = {"dup_new_seq", "ack_reused_seq", "ack_drop_one_in_ten", "poison_spreads"}
                    frame = json.loads(message) if fault in rewrites else {}
                    if frame.get("type") == "ack" and spoiled > 0:
                        spoiled -= 1
                        unavailable = {"type": "error", "code": "service_unavailable", "message": "resend"}
                        frame = {**unavailable, "message_id": frame["message_id"]}
                        message = json.dumps(frame)
                    if frame.get("type") == "ack" and fault == "ack_drop_one_in_ten":
                        acks += 1
                        if acks % 10 == 0:
                            continue
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
    parser.add_argument("--signing-key", help="the log's PEM key file (client_fork_sth)")
    parser.add_argument("--witness-key", help="a PEM Ed25519 witness key (client_*cosign*)")
    args = parser.parse_args()
    app = create_proxy(args.upstream, args.fault, args.signing_key, args.witness_key)
    app.run(host="127.0.0.1", port=args.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
