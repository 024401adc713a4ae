"""``nexo audit --json`` run on a test server's database (or over HTTP with ``remote``)."""

from __future__ import annotations

import json
from typing import Any

from contracts.server import LocalServer, run_nexo


def audit_env(server: LocalServer) -> dict[str, str]:
    keep = ("NEXO_DATA_DIR", "DATABASE_URL", "NEXO_SIGNING_KEY_FILE")
    env = {k: v for k, v in server.env.items() if k in keep}
    env.setdefault("DATABASE_URL", "")
    return env


def audit(server: LocalServer, *extra: str, remote: bool = False) -> tuple[int, str, dict[str, Any]]:
    args = ["audit", "--json", *extra] + (["--url", server.base_url] if remote else [])
    result = run_nexo(args, audit_env(server), server.data_dir)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, result.stderr, json.loads(result.stdout)
