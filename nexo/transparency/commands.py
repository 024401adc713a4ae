"""``nexo audit``: verify the STH chain of the local database or of a deployment (``--url``).

The checks are in ``transparency/audit``; this is the command: its progress bar on stderr
and the state file of ``--state FILE`` (alias ``--checkpoint FILE``), the latest STH of the
last clean audit (the *remembered head*), read before the audit and rewritten after a clean one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from nexo.platform.config import ConfigError, Settings
from nexo.platform.console import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM
from nexo.transparency.audit import Anomaly, RememberedHead, Report, run_audit
from nexo.transparency.audit.database import LocalSource
from nexo.transparency.audit.http import RemoteSource
from nexo.transparency.sth import STHError, unb64


def offline_settings() -> Settings:
    """Settings for a command that reads the database but issues no tokens."""
    env = dict(os.environ)
    env.setdefault("JWT_SECRET", "offline-command-" + "x" * 32)
    return Settings.from_env(env, dev=True)


class ProgressBar:
    """A progress line on stderr for long chains (at most a few updates a second)."""

    def __init__(self) -> None:
        self.total = 1
        self.enabled = False
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def start(self, total_leaves: int) -> None:
        self.total = max(total_leaves, 1)
        self.enabled = total_leaves >= 10_000

    def update(self, leaves_done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        share = min(leaves_done / self.total, 1.0)
        bar = "#" * int(share * 30)
        line = f"audit [{bar:<30}] {leaves_done}/{self.total} leaves ({share:.0%})"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def read_state(path: Path) -> RememberedHead | None:
    """The head remembered in ``path`` by the last clean audit; ``None`` before the first."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "index" not in data or "sth_hash" not in data:
        raise ValueError(f"{path} is not an STH remembered by nexo audit")
    return RememberedHead(int(data["index"]), str(data["sth_hash"]), str(path))


def write_state(path: Path, latest: dict[str, Any]) -> None:
    """Remember ``latest`` (an STH as served) in ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(latest, indent=2) + "\n")
    tmp.replace(path)


def _print_anomaly(anomaly: Anomaly) -> None:
    print(f"ANOMALY {anomaly.line()}", file=sys.stderr, flush=True)


async def _audit(args: argparse.Namespace, public_key: bytes | None) -> Report:
    state = Path(args.state) if args.state else None
    report = await _run(args, public_key, read_state(state) if state else None)
    if report.clean and state is not None and report.latest is not None:
        write_state(state, report.latest)
    return report


async def _run(
    args: argparse.Namespace, public_key: bytes | None, remembered: RememberedHead | None
) -> Report:
    settings = offline_settings()  # NEXO_WITNESSES and NEXO_WITNESS_QUORUM: the keys to check
    audit = functools.partial(
        run_audit,
        public_key=public_key,
        remembered=remembered,
        progress=None if args.quiet else ProgressBar(),
        on_anomaly=None if args.json else _print_anomaly,
        witnesses=settings.witnesses,
        quorum=settings.witness_quorum,
    )
    if args.url:
        async with (
            httpx.AsyncClient(timeout=args.timeout) as client,
            contextlib.aclosing(RemoteSource(args.url, client)) as remote,
        ):
            return await audit(remote)
    from nexo.platform import db

    if settings.database_kind == "sqlite" and not settings.sqlite_path.exists():
        raise FileNotFoundError(f"no database at {settings.sqlite_path} (set NEXO_DATA_DIR or DATABASE_URL)")
    await db.init_db(settings, create_schema=False)
    try:
        return await audit(LocalSource(settings.signing_key_path))
    finally:
        await db.close_db()


def cmd_audit(args: argparse.Namespace) -> int:
    public_key = None
    if args.public_key:
        try:
            public_key = unb64(args.public_key, "--public-key")
        except STHError as exc:
            print(f"nexo: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        report = asyncio.run(_audit(args, public_key))
    except ConfigError as exc:
        print(f"nexo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, httpx.HTTPError, LookupError, ValueError) as exc:
        print(f"nexo: audit could not read the log: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        latest: dict[str, Any] = report.latest or {}
        if latest:
            print(
                f"latest STH {latest['index']}: {latest['tree_size']} leaves, root {latest['root_hash']}, "
                f"origin {latest['origin']}"
            )
        for anomaly in report.anomalies:
            print(f"ANOMALY {anomaly.line()}")
        if (witness_line := report.witness_summary()) is not None:
            print(witness_line)
        print(report.summary())
    return EXIT_OK if report.clean else EXIT_PROBLEM


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="verify the transparency log's STH chain and every leaf",
        description="Verify every STH signature, index step, prev-hash link, monotonic size and time, "
        "a consistency proof between neighbours, every leaf hash and the roots recomputed from the "
        "leaves. Reads the local database (NEXO_DATA_DIR / DATABASE_URL, key from the signing key "
        "file) or, with --url, a deployment's public API only. Prints each anomaly with its STH or "
        "leaf index and kind. With NEXO_WITNESSES set, also verifies every stored cosignature by those "
        "witnesses and reports, per STH, whether NEXO_WITNESS_QUORUM of them cosigned it. "
        "Exit code 0: intact; 1: anomalies found; 2: could not audit.",
    )
    parser.add_argument(
        "--url", help="audit a deployment through its public API, e.g. https://nexo.example.com"
    )
    parser.add_argument(
        "--public-key",
        metavar="BASE64",
        help="the log's published Ed25519 key to verify against (default: the local signing key, or "
        "the key served by --url)",
    )
    parser.add_argument(
        "--state",
        "--checkpoint",
        dest="state",
        metavar="FILE",
        help="remember the latest STH here after a clean audit, and check next time that it is "
        "still in the chain unchanged (detects a rewritten or truncated history); --checkpoint is "
        "the older name of this option",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds for --url")
    parser.set_defaults(handler=cmd_audit)
