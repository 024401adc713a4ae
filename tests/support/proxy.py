"""``tests/support/fault_proxy.py`` run as a process in front of a real server, for a test."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from contracts.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def fault_proxy(upstream: str, fault: str, log: Path, *extra: str) -> Iterator[str]:
    """Start the proxy with ``fault`` in front of ``upstream`` (its output in ``log``); yield its URL."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.fault_proxy",
                "--upstream",
                upstream,
                "--port",
                str(port),
                "--fault",
                fault,
                *extra,
            ],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"fault proxy exited:\n{log.read_text()}"
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"fault proxy did not start:\n{log.read_text()}"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
