"""``nexo contracts``: run the installed contract suite and print one line per runbook promise.

A thin wrapper: it runs pytest on the ``contracts`` package with the given
options and a small plugin that collects each test's outcome and the figure it
measured (``record_property("figure", ...)``), then prints ✓/✗ per promise with
the figure and, for a failure, why.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexo.platform.console import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM

#: Contract module -> the runbook promise it checks, in the order they are printed.
PROMISES: dict[str, str] = {
    "test_health.py": "Health: 200, status/timestamp/users_count/sth_count, fast after warm-up",
    "test_auth.py": "JWT: 1-hour tokens, issuer, refresh works, refresh reuse refused",
    "test_expiry.py": "JWT expiry: an expired token gets 401 and 4401; an open socket closes at expiry",
    "test_bad_tokens.py": "Bad tokens: 401 over HTTP and 4401 on /ws, for every kind",
    "test_ws_ack.py": "WebSocket: an ACK for each message",
    "test_no_duplicates.py": "No duplicate messages under retries",
    "test_rate_limit.py": "Rate limiting: 100 req/min, then 429 with Retry-After",
    "test_sth_chain.py": "STH chain: index +1, signatures, links, inclusion and consistency proofs verify",
    "test_logout.py": "Logout ends the session everywhere: HTTP 401, open sockets closed 4401 within 1 s",
    "test_malformed_message.py": "One malformed message fails alone: the valid ones around it are all acked",
    "test_auth_budget.py": "The auth budget applies to every spelling of the auth paths",
    "test_bad_input.py": "Bad input never answers 5xx: overflowing numbers, tokens that are not text",
    "test_witness.py": "Witnesses: the checkpoint is cosigned by the configured quorum",
}


@dataclass
class Outcome:
    """What one contract module showed."""

    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    #: Checks that did not run: reason -> how many.
    not_run: dict[str, int] = field(default_factory=dict)


class Collector:
    """pytest plugin: outcomes and figures per contract module; prints a module's line when it ends."""

    def __init__(self, out: Any = None, *, live: bool = True) -> None:
        self.modules: dict[str, Outcome] = {}
        self.out = out or sys.stdout
        self.live = live
        self._current: str | None = None
        self._printed: set[str] = set()

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        module = _module(nodeid)
        if self.live and self._current is not None and module != self._current:
            self.print_module(self._current)
        self._current = module

    def pytest_runtest_logreport(self, report: Any) -> None:
        outcome = self.modules.setdefault(_module(report.nodeid), Outcome())
        for name, value in report.user_properties:
            if name == "figure" and value not in outcome.figures:
                outcome.figures.append(str(value))
        test = report.nodeid.split("::", 1)[-1]
        if report.failed:
            outcome.failed.append(f"{test}: {_reason(report)}")
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
            reason = str(reason).removeprefix("Skipped: ")
            outcome.skipped.append(reason)
            outcome.not_run[reason] = outcome.not_run.get(reason, 0) + 1
        elif report.when == "call":
            outcome.passed += 1

    def pytest_sessionfinish(self) -> None:
        if not self.live:
            print(file=self.out)
            for module in self.modules:
                self.print_module(module)
        elif self._current is not None:
            self.print_module(self._current)

    def print_module(self, module: str) -> None:
        if module in self._printed or module not in self.modules:
            return
        self._printed.add(module)
        print(self.line(module), file=self.out, flush=True)

    def line(self, module: str) -> str:
        outcome = self.modules[module]
        title = PROMISES.get(module, module)
        figures = "; ".join(outcome.figures)
        if outcome.failed:
            why = outcome.failed[0] + (
                f" (+{len(outcome.failed) - 1} more)" if len(outcome.failed) > 1 else ""
            )
            return f"✗ {title}" + (f" — {figures}" if figures else "") + f"\n    why: {why}"
        if outcome.skipped and not outcome.passed:
            return f"- {title} — skipped: {outcome.skipped[0]}"
        not_run = "".join(f"; {n} not run: {why}" for why, n in outcome.not_run.items())
        return f"✓ {title}" + (f" — {figures}" if figures else "") + f" ({outcome.passed} checks{not_run})"

    def failed(self) -> bool:
        return any(o.failed for o in self.modules.values())


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def _reason(report: Any) -> str:
    """The failure's sentence (the suite's ``why`` property), else the first line of its message."""
    for name, value in report.user_properties:
        if name == "why":
            return str(value)[:300]
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr)
    first = next((line for line in message.splitlines() if line.strip()), message)
    return first.removeprefix("AssertionError: ")[:300]


def pytest_args(args: argparse.Namespace, suite: Path, ini: Path) -> list[str]:
    """The pytest command line for ``args``.

    ``ini`` is an empty pytest.ini, so the suite runs the same from a checkout
    or an installed package, whatever configuration the working directory holds.
    """
    argv = [
        str(suite),
        "-c",
        str(ini),
        "--rootdir",
        str(suite.parent),
        "-p",
        "no:cacheprovider",
        "-p",
        "no:asyncio",
    ]
    if not args.verbose:
        argv += ["-p", "no:terminal"]
    if args.base_url:
        argv += ["--base-url", args.base_url]
    if args.allow_destructive:
        argv.append("--allow-destructive")
    if args.junit_xml:
        argv += ["--junit-xml", args.junit_xml, "-o", "junit_family=xunit1"]
    options = ("health_budget_ms", "ws_timeout", "sth_timeout", "rate_limit", "issuer", "cleanup_timeout")
    for option in (*options, "expired_token_file", "clock_skew"):
        value = getattr(args, option)
        if value is not None:
            argv += ["--" + option.replace("_", "-"), str(value)]
    if args.k:
        argv += ["-k", args.k]
    return argv


def cmd_contracts(args: argparse.Namespace) -> int:
    try:
        import pytest
    except ImportError:
        print("nexo: the contract suite needs pytest: pip install 'nexo[contracts]'", file=sys.stderr)
        return EXIT_CONFIG
    import contracts

    suite = Path(contracts.__file__).resolve().parent
    where = args.base_url or "a local server started for this run"
    print(f"nexo contracts: checking {where}", flush=True)
    collector = Collector(live=not args.verbose)
    with tempfile.TemporaryDirectory(prefix="nexo-contracts-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")
        code = pytest.main(pytest_args(args, suite, ini), plugins=[collector])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        print(f"nexo: the contract suite could not run (pytest exit code {int(code)})", file=sys.stderr)
        return EXIT_CONFIG
    broken = sum(1 for o in collector.modules.values() if o.failed)
    skipped = sum(1 for o in collector.modules.values() if not o.failed and not o.passed)
    kept = len(collector.modules) - broken - skipped
    print(f"promises: {kept} kept, {broken} broken, {skipped} skipped")
    if args.junit_xml:
        print(f"JUnit XML written to {args.junit_xml}")
    return EXIT_PROBLEM if collector.failed() or code == pytest.ExitCode.TESTS_FAILED else EXIT_OK


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "contracts",
        help="check the runbook's promises against a server (the contract suite)",
        description="Run the black-box contract suite against --base-url (or a local server it starts) "
        "and print one line per runbook promise. It creates throwaway users named ct_<random> and "
        "deletes them at the end; the rate-limit check spends a fresh user's budget and runs "
        "against a URL only with --allow-destructive. Exit code 0: every promise kept; 1: one broken.",
    )
    parser.add_argument(
        "--base-url",
        help="deployed Nexo to check, e.g. https://staging.example.com "
        "(env NEXO_BASE_URL; default: start a local server)",
    )
    parser.add_argument(
        "--allow-destructive",
        action="store_true",
        help="also run checks that spend a shared budget (rate limit)",
    )
    parser.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML report for a CI system")
    parser.add_argument("--health-budget-ms", type=float, help="health p95 budget (default 200)")
    parser.add_argument("--ws-timeout", type=float, help="seconds to wait for a WebSocket frame (default 10)")
    parser.add_argument("--sth-timeout", type=float, help="seconds to wait for sth_count to grow (default 3)")
    parser.add_argument("--rate-limit", type=int, help="promised requests per minute (default 100)")
    parser.add_argument("--issuer", help="expected JWT iss (default nexo)")
    parser.add_argument(
        "--cleanup-timeout",
        type=float,
        help="seconds to keep retrying the deletion of a rate-limited test user at the end (default 75; "
        "0: do not wait, print the users left behind)",
    )
    parser.add_argument(
        "--expired-token-file",
        metavar="FILE",
        help="an access token captured more than an hour ago (its session still live): proves expiry "
        "against a URL without the secret. Or give the server's JWT_SECRET in NEXO_CONTRACTS_JWT_SECRET "
        "(never printed or stored); with neither, expiry is reported as not proved",
    )
    parser.add_argument(
        "--clock-skew", type=float, help="seconds past exp the server may accept a token (default 30)"
    )
    parser.add_argument("-k", metavar="EXPR", help="only checks matching this pytest -k expression")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show pytest's own output")
    parser.set_defaults(handler=cmd_contracts)


def promise_lines(collector: Collector, modules: Iterable[str] | None = None) -> list[str]:
    """Every collected module's line (for tests and callers that print at the end)."""
    return [collector.line(m) for m in (modules or collector.modules)]
