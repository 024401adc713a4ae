"""``nexo contracts`` formatting: one line per promise from pytest reports."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from types import SimpleNamespace

from nexo.ops.contracts_command import Collector, pytest_args


def _report(
    nodeid: str, when: str, outcome: str, figure: str | None = None, message: str = ""
) -> SimpleNamespace:
    return SimpleNamespace(
        nodeid=nodeid,
        when=when,
        passed=outcome == "passed",
        failed=outcome == "failed",
        skipped=outcome == "skipped",
        user_properties=[("figure", figure)] if figure else [],
        longrepr=SimpleNamespace(reprcrash=SimpleNamespace(message=message)) if message else None,
    )


def test_lines_show_the_figure_and_why_a_promise_failed() -> None:
    out = io.StringIO()
    collector = Collector(out)
    collector.pytest_runtest_logstart("contracts/test_health.py::test_p95", ("", None, ""))
    collector.pytest_runtest_logreport(
        _report("contracts/test_health.py::test_p95", "call", "passed", "health p95 = 3.1 ms (budget 200 ms)")
    )
    collector.pytest_runtest_logstart("contracts/test_ws_ack.py::test_ack", ("", None, ""))
    collector.pytest_runtest_logreport(
        _report(
            "contracts/test_ws_ack.py::test_ack", "call", "failed", message="AssertionError: no ack\nmore"
        )
    )
    collector.pytest_sessionfinish()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("✓ Health") and "health p95 = 3.1 ms (budget 200 ms)" in lines[0]
    assert lines[1].startswith("✗ WebSocket: an ACK for each message")
    assert lines[2] == "    why: test_ack: no ack"
    assert collector.failed()


def test_a_skipped_promise_says_why() -> None:
    collector = Collector(io.StringIO())
    report = _report("contracts/test_rate_limit.py::test_429", "setup", "skipped")
    report.longrepr = ("file", 1, "Skipped: spends a shared budget")
    collector.pytest_runtest_logreport(report)
    assert collector.line("test_rate_limit.py").endswith("skipped: spends a shared budget")
    assert not collector.failed()


def test_options_reach_pytest() -> None:
    args = argparse.Namespace(
        base_url="https://staging.example.com",
        allow_destructive=True,
        junit_xml="out.xml",
        health_budget_ms=300.0,
        ws_timeout=None,
        sth_timeout=None,
        rate_limit=None,
        issuer=None,
        cleanup_timeout=0.0,
        expired_token_file="token.txt",
        clock_skew=None,
        k=None,
        verbose=False,
    )
    argv = pytest_args(args, Path("/suite/contracts"), Path("/ini/pytest.ini"))
    assert argv[0] == "/suite/contracts"
    assert argv[argv.index("--base-url") + 1] == "https://staging.example.com"
    assert "--allow-destructive" in argv and "--junit-xml" in argv and "junit_family=xunit1" in argv
    assert argv[argv.index("--health-budget-ms") + 1] == "300.0"
    assert "--ws-timeout" not in argv and "--clock-skew" not in argv
    assert argv[argv.index("--cleanup-timeout") + 1] == "0.0"
    assert argv[argv.index("--expired-token-file") + 1] == "token.txt"


def test_a_failure_reads_as_the_suites_sentence_and_skipped_checks_are_counted() -> None:
    collector = Collector(io.StringIO())
    failed = _report(
        "contracts/test_sth_chain.py::test_x", "setup", "failed", message="KeyError: 'sth_count'"
    )
    failed.user_properties.append(("why", "the server's answer lacks 'sth_count' (KeyError at x.py:3)"))
    collector.pytest_runtest_logreport(failed)
    assert "why: test_x: the server's answer lacks 'sth_count'" in collector.line("test_sth_chain.py")
    collector.pytest_runtest_logreport(_report("contracts/test_bad_tokens.py::test_a", "call", "passed"))
    for name in ("test_b", "test_c"):
        skipped = _report(f"contracts/test_bad_tokens.py::{name}", "setup", "skipped")
        skipped.longrepr = ("file", 1, "Skipped: needs the server's secret")
        collector.pytest_runtest_logreport(skipped)
    assert collector.line("test_bad_tokens.py").endswith("(1 checks; 2 not run: needs the server's secret)")


def test_an_unexpected_exception_reads_as_a_sentence() -> None:
    import httpx
    import pytest

    from contracts.conftest import explain

    def caught(error: BaseException) -> pytest.ExceptionInfo[BaseException]:
        try:
            raise error
        except BaseException:
            return pytest.ExceptionInfo.from_current()

    assert explain(caught(KeyError("sth_count"))).startswith(
        "the server's answer lacks 'sth_count' (KeyError at "
    )
    assert explain(caught(httpx.ConnectError("refused"))).startswith(
        "could not talk to the server: ConnectError"
    )
    assert explain(caught(AssertionError("STH 3: bad\nassert 1 == 2"))) == "STH 3: bad"
