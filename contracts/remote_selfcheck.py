"""Run the contract suite in ``--base-url`` mode against a separately started server.

CI uses this so the remote path (what operators aim at staging) cannot rot:
it starts a Nexo with ``LocalServer`` (its own data dir, free port, default
limits), then runs ``nexo contracts --base-url http://127.0.0.1:PORT
--allow-destructive`` in a separate process, which knows nothing of that
server but its URL and, as an operator would give it to prove token expiry,
its ``JWT_SECRET`` in ``NEXO_CONTRACTS_JWT_SECRET``; it exits with that
command's exit code.

    python -m contracts.remote_selfcheck [--backend postgres] [--junit-xml FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from contracts.server import LocalServer, scratch_postgres
from contracts.tokens import SECRET_ENV


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--junit-xml", metavar="FILE")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if args.backend == "postgres":
            env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexo-remote-")))
        server = stack.enter_context(LocalServer(data_dir, env))
        command = [sys.executable, "-m", "nexo", "contracts", "--base-url", server.base_url]
        command += ["--allow-destructive", "--verbose"]
        if args.junit_xml:
            command += ["--junit-xml", args.junit_xml]
        print(f"remote selfcheck: {' '.join(command[2:])}", flush=True)
        env = {**os.environ, SECRET_ENV: server.env["JWT_SECRET"]}
        code = subprocess.run(command, env=env, check=False).returncode
        if code != 0:
            print(f"server log tail:\n{server.log_tail()}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
