"""``nexo audit``: verify the STH chain of the local database or of a deployment (``--url``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from nexo.config import ConfigError, Settings
from nexo.console import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM
from nexo.transparency.audit import Anomaly, LocalSource, RemoteSource, Report, run_audit
from nexo.transparency.sth import STHError, unb64


def offline_settings() -> Settings:
    """Settings for a command that reads the database but issues no tokens."""
    env = dict(os.environ)
    env.setdefault("JWT_SECRET", "offline-command-" + "x" * 32)
    return Settings.from_env(env, dev=True)


def _print_anomaly(anomaly: Anomaly) -> None:
    print(f"ANOMALY {anomaly.line()}", file=sys.stderr, flush=True)


async def _audit(args: argparse.Namespace, public_key: bytes | None) -> Report:
    settings = offline_settings()  # NEXO_WITNESSES and NEXO_WITNESS_QUORUM: the keys to check
    audit = functools.partial(
        run_audit,
        public_key=public_key,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        progress=not args.quiet,
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
    from nexo import db

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
        "--checkpoint",
        metavar="FILE",
        help="remember the latest STH here after a clean audit, and check next time that it is "
        "still in the chain unchanged (detects a rewritten or truncated history)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds for --url")
    parser.set_defaults(handler=cmd_audit)
