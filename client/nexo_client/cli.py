"""The ``nexo-client`` command.

Exit codes: 0 success; 1 error (the server refused, bad state); 2 usage;
3 verification failure (a tree head, proof, cosignature or envelope did not
verify: the state is unchanged and nothing was sent); 4 authentication (not
logged in, wrong password, session ended); 5 server unreachable; 6 timed out
(``send`` not acked yet — it stays queued — or ``listen --count`` not reached).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from .client import Message, NexoClient
from .errors import NexoClientError

EXIT_TIMEOUT = 6
DEFAULT_SERVER = "http://127.0.0.1:5000"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=argparse.SUPPRESS,
                        help="Nexo base URL (NEXO_SERVER; default: the state's server, "
                        f"else {DEFAULT_SERVER})")
    common.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="keys, session, outbox (NEXO_CLIENT_STATE_DIR; default ~/.nexo-client)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="one JSON object per line")
    parser = argparse.ArgumentParser(
        prog="nexo-client", parents=[common], description="Nexo client: end-to-end encrypted messages, "
        "keys verified against the server's transparency log.", epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("register", "create an account and register this device"),
                       ("login", "log in and register this device if needed")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("user")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from stdin (else NEXO_PASSWORD, else a prompt)")
    p = sub.add_parser("send", parents=[common], help="encrypt and send TEXT to USER; exits once acked")
    p.add_argument("user")
    p.add_argument("text")
    p = sub.add_parser("listen", parents=[common], help="print verified incoming messages")
    p.add_argument("--count", type=int, help="exit after N messages")
    p.add_argument("--timeout", type=float, help="exit after SECONDS")
    p = sub.add_parser("verify", parents=[common],
                       help="check USER's keys against the log and show the proof")
    p.add_argument("user")
    sub.add_parser("devices", parents=[common], help="list this account's devices")
    return parser


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("NEXO_PASSWORD"):
        return os.environ["NEXO_PASSWORD"]
    return getpass.getpass(f"password for {args.user}: ")


def _state_dir(args: argparse.Namespace) -> Path:
    raw = getattr(args, "state_dir", None) or os.environ.get("NEXO_CLIENT_STATE_DIR") or "~/.nexo-client"
    return Path(raw).expanduser()


def _server(args: argparse.Namespace, state_dir: Path) -> str:
    explicit = getattr(args, "server", None) or os.environ.get("NEXO_SERVER")
    if explicit:
        return str(explicit)
    db = state_dir / "client.db"
    if db.exists():
        import sqlite3

        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = 'account'").fetchone()
        if row:
            return str(json.loads(row[0])["server"])
    return DEFAULT_SERVER


def _witness_options() -> dict[str, Any]:
    raw = os.environ.get("NEXO_CLIENT_WITNESSES", "").strip()
    if not raw:
        return {}
    quorum = os.environ.get("NEXO_CLIENT_WITNESS_QUORUM")
    return {"witnesses": [w for w in raw.split(",") if w.strip()],
            "witness_quorum": int(quorum) if quorum else None}


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, line: str, **doc: Any) -> None:
        print(json.dumps(doc, ensure_ascii=False) if self.as_json else line, flush=True)


async def _run(args: argparse.Namespace, out: Output) -> int:
    state_dir = _state_dir(args)
    client = NexoClient(_server(args, state_dir), state_dir, **_witness_options())
    try:
        if args.command in ("register", "login"):
            password = _password(args)
            if args.command == "register":
                await client.register(args.user, password)
            else:
                await client.login(args.user, password)
            device = client.store.get("device")
            done = "registered" if args.command == "register" else "logged in"
            out.emit(f"{done} as {client.username}; device keys registered and verified in the log",
                     event=args.command, user=client.username, device=device)
        elif args.command == "send":
            message_id = await client.send(args.user, args.text)
            client.start()
            try:
                await client.wait_acked(message_id, timeout=30)
            except TimeoutError:
                out.emit(f"queued {message_id}, not acked yet: the next send or listen resends it",
                         event="queued", message_id=message_id)
                return EXIT_TIMEOUT
            out.emit(f"sent {message_id} to {args.user.lower()} ✓", event="sent", message_id=message_id,
                     to=args.user.lower())
        elif args.command == "listen":
            async def show(m: Message) -> None:
                out.emit(f"{m.sender}: {m.text} ✓ verified", event="message", message_id=m.message_id,
                         seq=m.seq, sender=m.sender, sender_device=m.sender_device, to=m.to, text=m.text,
                         server_ts=m.server_ts, verified=True)

            await client.ensure_device()
            got = await client.listen(show, count=args.count, timeout=args.timeout)
            if args.count is not None and got < args.count:
                return EXIT_TIMEOUT
        elif args.command == "verify":
            report = await client.verify(args.user)
            if out.as_json:
                out.emit("", event="verify", **report)
            else:
                sth = report["sth"]
                print(f"{report['user']}: {len(report['devices'])} active key(s), each proven in the log")
                for d in report["devices"]:
                    print(f"  {d['key_type']:8} {d['device_id']} {d['public_key']} leaf {d['leaf_index']} ✓")
                print(f"tree head {sth['index']} (size {sth['tree_size']}, root {sth['root_hash']}) "
                      "signature ✓")
                print(f"consistency: {report['consistency']}")
                if report["cosignatures"]:
                    print("witness cosignatures verified: " + ", ".join(report["cosignatures"]))
                elif report.get("unchecked_cosigners"):
                    print("cosigned by " + ", ".join(report["unchecked_cosigners"]) + " (not checked: "
                          "set NEXO_CLIENT_WITNESSES to the witnesses' vkeys)")
                else:
                    print("witness cosignatures: none (the log has no witnesses, none configured here)")
        elif args.command == "devices":
            for d in await client.devices():
                state = "revoked" if d.get("revoked_at") else "active"
                out.emit(f"{d['id']} {d['key_type']:8} {d['name']} {state} leaf {d['leaf_index']}",
                         event="device", **d)
        return 0
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Output(bool(getattr(args, "json", False)))
    try:
        return asyncio.run(_run(args, out))
    except NexoClientError as exc:
        name = type(exc).__name__
        if out.as_json:
            print(json.dumps({"event": "error", "error": name, "message": str(exc)}), flush=True)
        print(f"nexo-client: {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
