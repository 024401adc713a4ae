"""Start a real Nexo server as a subprocess on a free port, for the contract suite and tests.

This is harness, not a test: it runs ``python -m nexo serve`` with a fresh data
directory (and, for PostgreSQL, a scratch database it creates and drops), waits
for ``/api/health`` and hands out the base URL. The tests themselves talk HTTP
and WebSocket only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def random_secret() -> str:
    return secrets.token_urlsafe(48)


class ServerFailed(RuntimeError):
    """The server exited or never became healthy; the message holds its log tail."""


class LocalServer:
    """One ``nexo serve`` process (with its workers) on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        workers: int = 1,
        port: int | None = None,
        command: tuple[str, ...] = ("serve",),
        extra_args: tuple[str, ...] = (),
        scheme: str = "http",
        module: str = "nexo",
        python: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.workers = workers
        self.command = command
        self.extra_args = extra_args
        self.scheme = scheme
        #: The module run as ``python -m``: ``nexo``, or a test wrapper that patches it first.
        self.module = module
        #: The interpreter (default this one): another checkout's venv runs that checkout's code.
        self.python = python or sys.executable
        self.env = {
            "JWT_SECRET": random_secret(),
            "NEXO_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"server-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return ("wss" if self.scheme == "https" else "ws") + f"://127.0.0.1:{self.port}/ws"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to be healthy."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        args = [self.python, "-m", self.module, *self.command, "--host", "127.0.0.1"]
        args += ["--port", str(self.port)]
        if self.command == ("serve",):
            args += ["--workers", str(self.workers)]
        args += list(self.extra_args)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args,
            env=env,
            cwd=self.data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self.process

    def start(self, timeout: float = 45.0) -> LocalServer:
        self.spawn()
        return self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 45.0) -> LocalServer:
        """Wait until the spawned process answers ``/api/health`` with 200."""
        process = self.process
        assert process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        verify = self.scheme != "https"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerFailed(f"nexo exited with {process.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.base_url}/api/health", timeout=1.0, verify=verify)
                if response.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise ServerFailed(f"nexo did not become healthy in {timeout}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``. Returns the exit code."""
        if self.process is None:
            return None
        self._signal_group(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group: the crash case."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_nexo(
    args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run one ``nexo`` CLI command to completion (for CLI tests)."""
    return subprocess.run(
        [sys.executable, "-m", "nexo", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)``, also from a thread whose event loop is running (Playwright's
    sync API keeps one running under the tests' code): then on a thread of its own."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="run-async") as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextlib.contextmanager
def scratch_postgres(admin_url: str | None = None) -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it afterwards."""
    import asyncpg

    admin = admin_url or os.environ.get("NEXO_TEST_PG_URL", DEFAULT_PG_URL)
    name = f"nexo_t_{secrets.token_hex(6)}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_async(execute(f'CREATE DATABASE "{name}"'))
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        run_async(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
