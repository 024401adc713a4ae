"""The contract suite's one fixture: ``target``, a server to check.

By default it starts its own Nexo (temporary data dir, free port); with
``--base-url URL`` (or ``NEXO_BASE_URL``) it checks a deployed server instead,
over HTTP and WebSocket only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts.server import DEFAULT_REDIS_URL, LocalServer, scratch_postgres


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nexo contracts")
    group.addoption(
        "--base-url",
        default=os.environ.get("NEXO_BASE_URL"),
        help="check a deployed Nexo at this URL instead of starting one",
    )
    group.addoption(
        "--allow-destructive",
        action="store_true",
        default=False,
        help="against --base-url, also run tests that spend shared budgets (rate limit)",
    )
    group.addoption(
        "--health-budget-ms",
        type=float,
        default=200.0,
        help="health p95 budget in milliseconds (runbook: 200)",
    )
    group.addoption(
        "--backend",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="database of the server started locally (default sqlite)",
    )
    group.addoption("--workers", type=int, default=1, help="workers of the local server")
    group.addoption(
        "--redis",
        action="store_true",
        default=False,
        help="give the local server REDIS_URL (NEXO_TEST_REDIS_URL or localhost)",
    )


@dataclass(frozen=True)
class Target:
    base_url: str
    local: bool
    allow_destructive: bool
    health_budget_ms: float
    server: LocalServer | None = None

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.base_url.startswith("https") else "ws"
        return scheme + self.base_url[self.base_url.index(":") :].rstrip("/") + "/ws"

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    config = request.config
    budget = config.getoption("--health-budget-ms")
    base_url = config.getoption("--base-url")
    if base_url:
        yield Target(base_url.rstrip("/"), False, config.getoption("--allow-destructive"), budget)
        return
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if config.getoption("--backend") == "postgres":
            env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
        if config.getoption("--redis"):
            env["REDIS_URL"] = os.environ.get("NEXO_TEST_REDIS_URL", DEFAULT_REDIS_URL)
        data_dir = Path(tmp_path_factory.mktemp("nexo-contracts"))
        server = LocalServer(data_dir, env, workers=config.getoption("--workers")).start()
        stack.callback(server.stop)
        yield Target(server.base_url, True, True, budget, server)
