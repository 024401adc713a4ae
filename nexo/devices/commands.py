"""``nexo devices review``: recent device registrations and revocations (the runbook's review)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from nexo.platform.config import ConfigError
from nexo.platform.console import EXIT_CONFIG, EXIT_OK
from nexo.platform.timefmt import utc_iso

_SPAN = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` ago, or an ISO-8601 date/time (UTC if no zone)."""
    now = now or datetime.now(UTC)
    match = _SPAN.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: use 7d, 12h, 30m, 2w or an ISO date like 2026-01-31") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _review(since: datetime, username: str | None) -> list[dict[str, Any]]:
    from nexo.auth import service as accounts
    from nexo.devices import service
    from nexo.platform import db
    from nexo.transparency import service as log

    settings = log.offline_settings()
    await db.init_db(settings, create_schema=False)
    try:
        user_id = None
        if username:
            user = await accounts.find_user(username)
            if user is None:
                raise LookupError(f"no user {username!r}")
            user_id = user.id
        devices = await service.changed_since(since, user_id)
        indexes = {d.leaf_index for d in devices}
        leaves = await log.leaves_at(indexes)
        rows: list[dict[str, Any]] = []
        for device in devices:
            event = json.loads(leaves[device.leaf_index]) if device.leaf_index in leaves else {}
            common = {
                "device_id": str(device.id),
                "user_id": device.user_id,
                "username": event.get("username"),
                "name": device.name,
                "key_type": device.key_type,
                "public_key": device.public_key,
            }
            if device.created_at >= since:
                rows.append(
                    {"at": device.created_at, "action": "register", "leaf_index": device.leaf_index, **common}
                )
            if device.revoked_at is not None and device.revoked_at >= since:
                rows.append(
                    {
                        "at": device.revoked_at,
                        "action": "revoke",
                        "leaf_index": device.revoke_leaf_index,
                        **common,
                    }
                )
        rows.sort(key=lambda r: (r["at"], r["leaf_index"] or 0))
        for row in rows:
            row["at"] = utc_iso(row["at"])
        return rows
    finally:
        await db.close_db()


def cmd_review(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since)
        rows = asyncio.run(_review(since, args.user.lower() if args.user else None))
    except (ValueError, LookupError, ConfigError) as exc:
        print(f"nexo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps({"since": utc_iso(since), "events": rows}, indent=2))
        return EXIT_OK
    registered = sum(1 for r in rows if r["action"] == "register")
    print(
        f"device events since {since:%Y-%m-%d %H:%M:%S}Z: {registered} registrations, "
        f"{len(rows) - registered} revocations"
    )
    for r in rows:
        who = r["username"] or f"#{r['user_id']}"
        print(
            f"{r['at']}  {r['action']:<8}  leaf {r['leaf_index']:<8}  {who}"
            f"  {r['key_type']:<7}  {r['device_id']}  {r['name']!r}  {r['public_key']}"
        )
    return EXIT_OK


def register(subparsers: Any) -> None:
    devices = subparsers.add_parser(
        "devices", help="device keys", description="Device key tools (the runbook's device review)."
    )
    commands = devices.add_subparsers(dest="devices_command", metavar="DEVICES_COMMAND")
    review = commands.add_parser(
        "review",
        help="list recent device registrations and revocations",
        description="List device registrations and revocations since a time, oldest first, with "
        "the log leaf that records each. Reads the local database (NEXO_DATA_DIR / DATABASE_URL).",
    )
    review.add_argument("--since", default="7d", help="7d, 12h, 30m, 2w or an ISO date (default 7d)")
    review.add_argument("--user", metavar="NAME", help="only this user's devices")
    review.add_argument("--json", action="store_true", help="print JSON")
    review.set_defaults(handler=cmd_review)

    def usage(_args: argparse.Namespace) -> int:
        devices.print_help()
        return EXIT_CONFIG

    devices.set_defaults(handler=usage)
