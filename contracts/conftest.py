"""The contract suite's fixtures: ``target`` (a server to check) and ``accounts``.

By default it starts its own Nexo (temporary data dir, free port); with
``--base-url URL`` (or ``NEXO_BASE_URL``) it checks a deployed server instead,
over HTTP and WebSocket only.

Safety on shared environments: every user the suite needs comes from
``accounts.create()`` (a recognisable prefix plus a random part) and is deleted
with ``DELETE /api/me`` when the run ends. Tests marked ``destructive`` (they
spend a shared budget) run against a URL only with ``--allow-destructive``.
Tests report what they measured with the ``figure`` fixture; ``nexo contracts``
prints it, and JUnit XML (``-o junit_family=xunit1``) carries it as a property.

Token expiry is proved for real (``contracts/test_expiry.py``): a local run
also starts a second server whose access tokens live ``EXPIRY_TTL`` seconds
and logs in there at once, so the wait overlaps the rest of the run; against
a URL the operator gives the server's secret in ``NEXO_CONTRACTS_JWT_SECRET``
(never printed or stored) or ``--expired-token-file``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.client import retry_after
from contracts.server import DEFAULT_REDIS_URL, LocalServer, scratch_postgres
from contracts.tokens import SECRET_ENV, Minter, Secret

#: Access-token lifetime of the second server a local run starts to prove expiry (seconds).
EXPIRY_TTL = 4


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
    group.addoption(
        "--ws-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for a WebSocket frame or close (network round trips included)",
    )
    group.addoption(
        "--sth-timeout",
        type=float,
        default=3.0,
        help="seconds to wait for health's sth_count to grow after a device registration",
    )
    group.addoption(
        "--rate-limit",
        type=int,
        default=100,
        help="requests per minute per client the server promises (runbook: 100)",
    )
    group.addoption("--issuer", default="nexo", help="expected JWT iss claim (JWT_ISSUER, default nexo)")
    group.addoption(
        "--cleanup-timeout",
        type=float,
        default=75.0,
        help="seconds to keep retrying the deletion of a rate-limited test user at the end",
    )
    group.addoption(
        "--expired-token-file",
        default=None,
        help="against --base-url: a file holding an access token captured more than an hour ago "
        "(its session still live), to prove expiry without the signing secret",
    )
    group.addoption(
        "--clock-skew",
        type=float,
        default=30.0,
        help="seconds past exp the server may still accept a token (docs/auth.md: 30)",
    )
    group.addoption("--workers", type=int, default=1, help="workers of the local server")
    group.addoption(
        "--redis",
        action="store_true",
        default=False,
        help="give the local server REDIS_URL (NEXO_TEST_REDIS_URL or localhost)",
    )


@dataclass(frozen=True)
class Expiry:
    """What this run has to prove token expiry with (``contracts/test_expiry.py``)."""

    #: Where the naturally expiring tokens live: the short-lifetime server of a local run.
    base_url: str | None = None
    ttl: int | None = None
    #: A user logged in on that server when the run started (``contracts.client.Account``).
    early: Any = None
    #: An access token read from ``--expired-token-file``, and that file.
    token_file: str | None = None
    file_token: str | None = None
    #: Why expiry cannot be proved from the file, when it cannot.
    file_problem: str | None = None

    @property
    def ws_url(self) -> str | None:
        if self.base_url is None:
            return None
        scheme = "wss" if self.base_url.startswith("https") else "ws"
        return scheme + self.base_url[self.base_url.index(":") :].rstrip("/") + "/ws"


@dataclass(frozen=True)
class Target:
    base_url: str
    local: bool
    allow_destructive: bool
    health_budget_ms: float
    server: LocalServer | None = None
    backend: str | None = None
    ws_timeout: float = 10.0
    sth_timeout: float = 3.0
    rate_limit: int = 100
    issuer: str = "nexo"
    cleanup_timeout: float = 75.0
    clock_skew: float = 30.0
    #: Signs tokens with the server's secret (a local run's own, or NEXO_CONTRACTS_JWT_SECRET).
    minter: Minter | None = field(default=None, repr=False)
    expiry: Expiry | None = None

    @property
    def sqlite_path(self) -> Path | None:
        """The local server's SQLite file (for the runbook's duplicate query), else None."""
        if self.server is None or self.backend != "sqlite":
            return None
        return self.server.data_dir / "nexo.db"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.base_url.startswith("https") else "ws"
        return scheme + self.base_url[self.base_url.index(":") :].rstrip("/") + "/ws"

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "destructive: spends a shared budget (rate limit); against --base-url only with --allow-destructive",
    )


def _destructive_allowed(config: pytest.Config) -> bool:
    return not config.getoption("--base-url") or bool(config.getoption("--allow-destructive"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Budget-spending tests run first, so their users' cool-down overlaps the rest of the run;
    the expiry checks run last, so the wait for a token to expire overlaps it too."""
    skip = pytest.mark.skip(reason="spends a shared budget: pass --allow-destructive to run it against a URL")
    for item in items:
        if item.get_closest_marker("destructive") and not _destructive_allowed(config):
            item.add_marker(skip)

    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("destructive"):
            return 0
        return 2 if item.nodeid.rsplit("/", 1)[-1].startswith("test_expiry.py") else 1

    items.sort(key=order)


def _backend_env(config: pytest.Config, stack: contextlib.ExitStack) -> dict[str, str]:
    """Database and Redis settings of one local server (its own scratch database and prefix)."""
    env: dict[str, str] = {}
    if config.getoption("--backend") == "postgres":
        env["DATABASE_URL"] = stack.enter_context(scratch_postgres())
    if config.getoption("--redis"):
        env["REDIS_URL"] = os.environ.get("NEXO_TEST_REDIS_URL", DEFAULT_REDIS_URL)
        # Budgets live in Redis: a prefix of its own, so earlier runs (whose user ids
        # repeat in a fresh database) and other servers do not spend this run's budget.
        env["NEXO_REDIS_PREFIX"] = f"nexo-contracts-{secrets.token_hex(6)}"
    return env


def _expiry_from_file(path: str) -> Expiry:
    from contracts.tokens import read_token_file

    try:
        return Expiry(token_file=path, file_token=read_token_file(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        return Expiry(token_file=path, file_problem=f"--expired-token-file {path}: {exc}")


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    config = request.config
    budget = config.getoption("--health-budget-ms")
    base_url = config.getoption("--base-url")
    tuning: dict[str, Any] = {
        "ws_timeout": config.getoption("--ws-timeout"),
        "sth_timeout": config.getoption("--sth-timeout"),
        "rate_limit": config.getoption("--rate-limit"),
        "issuer": config.getoption("--issuer"),
        "cleanup_timeout": config.getoption("--cleanup-timeout"),
        "clock_skew": config.getoption("--clock-skew"),
    }
    if base_url:
        secret = os.environ.get(SECRET_ENV)
        token_file = config.getoption("--expired-token-file")
        expiry = _expiry_from_file(token_file) if token_file else Expiry()
        minter = Minter(Secret(secret), tuning["issuer"]) if secret else None
        destructive = config.getoption("--allow-destructive")
        yield Target(base_url.rstrip("/"), False, destructive, budget, minter=minter, expiry=expiry, **tuning)
        return
    from contracts.client import Account

    with contextlib.ExitStack() as stack:
        workers = config.getoption("--workers")
        # The expiry server starts while the main one does; its first user logs in at once,
        # so by the time test_expiry.py runs (last) the token is long expired.
        expiry_env = {**_backend_env(config, stack), "NEXO_ACCESS_TOKEN_TTL": str(EXPIRY_TTL)}
        expiry_server = LocalServer(Path(tmp_path_factory.mktemp("nexo-expiry")), expiry_env, workers=workers)
        expiry_server.spawn()
        stack.callback(expiry_server.stop)
        data_dir = Path(tmp_path_factory.mktemp("nexo-contracts"))
        server = LocalServer(data_dir, _backend_env(config, stack), workers=workers).start()
        stack.callback(server.stop)
        expiry_server.wait_healthy()
        expiry = Expiry(expiry_server.base_url, EXPIRY_TTL, Account.create(expiry_server.base_url))
        minter = Minter(Secret(server.env["JWT_SECRET"]), tuning["issuer"])
        backend = config.getoption("--backend")
        yield Target(
            server.base_url, True, True, budget, server, backend, minter=minter, expiry=expiry, **tuning
        )


Figure = Callable[[str], None]


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """``figure("health p95 = 3.1 ms (budget 200 ms)")``: what a test measured, for the report."""

    def record(text: str) -> None:
        request.node.user_properties.append(("figure", text))

    return record


@dataclass
class Accounts:
    """Creates throwaway users and deletes every one of them at the end of the run."""

    target: Target
    created: list[Any] = field(default_factory=list)

    def create(self) -> Any:
        """A fresh registered and logged-in user (``contracts.client.Account``)."""
        from contracts.client import Account

        account = Account.create(self.target.base_url)
        self.created.append(account)
        return account

    def forget(self, account: Any) -> None:
        """The test deleted this user itself."""
        self.created = [a for a in self.created if a is not account]

    def delete_all(self) -> list[str]:
        """``DELETE /api/me`` for each user; waits out a 429 (``Retry-After``). Returns leftovers."""
        left: list[str] = []
        # A server this run started is thrown away with its users: no need to wait out a 429.
        patience = 0.0 if self.target.local else self.target.cleanup_timeout
        deadline = time.monotonic() + patience
        with httpx.Client(timeout=10) as client:
            for account in self.created:
                while True:
                    try:
                        response = client.delete(self.target.url("/api/me"), headers=account.headers)
                    except httpx.HTTPError:
                        left.append(account.username)
                        break
                    if response.status_code in (200, 204, 401, 404):
                        break
                    wait = retry_after(response)
                    if response.status_code != 429 or time.monotonic() + wait > deadline:
                        left.append(account.username)
                        break
                    time.sleep(wait)
        self.created = []
        return left


@pytest.fixture(scope="session")
def accounts(target: Target) -> Iterator[Accounts]:
    registry = Accounts(target)
    yield registry
    left = registry.delete_all()
    if left and not target.local:
        print(f"\nnexo contracts: could not delete test users {', '.join(left)}; delete them by hand")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failure's one-sentence reason, as the ``why`` property (``nexo contracts`` prints it).

    A broken promise reads as a sentence, never a traceback: an assertion's own
    message, or, for anything else the check ran into (a field missing from an
    answer, a refused connection), what happened and where.
    """
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        report.user_properties.append(("why", explain(call.excinfo)))


def explain(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """One sentence for an exception raised inside a contract check."""
    exc = excinfo.value
    text = str(exc).strip()
    if isinstance(exc, AssertionError):
        first = next((line for line in text.splitlines() if line.strip()), "")
        return first or "assertion failed"
    where = _where(excinfo)
    name = type(exc).__name__
    if isinstance(exc, KeyError):
        return f"the server's answer lacks {text} ({name} at {where})"
    if isinstance(exc, httpx.HTTPError):
        return f"could not talk to the server: {name}: {text or 'no details'} (at {where})"
    if isinstance(exc, ValueError) and "JSON" in type(exc).__name__ + text:
        return f"the server's answer is not the JSON expected: {text} (at {where})"
    if isinstance(exc, (TypeError, IndexError, ValueError)):
        return f"the server's answer has an unexpected shape: {name}: {text} (at {where})"
    if isinstance(exc, (OSError, TimeoutError)):
        return f"the connection failed: {name}: {text or 'no details'} (at {where})"
    return f"the check stopped on {name}: {text} (at {where})"


def _where(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """``file.py:line`` of the innermost frame in the contract suite."""
    suite = Path(__file__).resolve().parent
    for entry in reversed(excinfo.traceback):
        path = Path(str(entry.path))
        if path.is_relative_to(suite):
            return f"{path.name}:{entry.lineno + 1}"
    return "outside the suite"
