"""The contract suite fails when a promise is broken (and passes when none is).

Each case puts ``tests/fault_proxy.py`` (or a deliberately misconfigured
server) in front of a real Nexo, runs the matching contract module against it
with ``pytest --base-url <proxy> --allow-destructive`` in a subprocess, and
checks that exactly the expected contract test failed, for the expected reason.
"""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from contracts.server import LocalServer, free_port
from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parent.parent
#: The upstream's budgets: generous for anonymous traffic (several suite runs share
#: one server and one address), and a per-user limit the suite is told about.
UPSTREAM_ENV = {"NEXO_AUTH_RATE_LIMIT": "1000/minute", "NEXO_RATE_LIMIT": "300/minute"}
SUITE_ARGS = ["--allow-destructive", "--rate-limit", "300", "--cleanup-timeout", "0"]


def run_contracts(
    base_url: str, modules: list[str], out: Path, *extra: str
) -> tuple[int, dict[str, str], str]:
    """Run contract modules against ``base_url``; return (exit code, {failed test: message}, output)."""
    xml = out / f"junit-{time.monotonic_ns()}.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *(f"contracts/{m}" for m in modules),
            "--base-url",
            base_url,
            *SUITE_ARGS,
            *extra,
            "-q",
            "-p",
            "no:cacheprovider",
            "--junit-xml",
            str(xml),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    failures: dict[str, str] = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):  # noqa: S314 - our own report
            for problem in [*case.iter("failure"), *case.iter("error")]:
                failures[case.get("name", "?")] = (problem.get("message") or "") + (problem.text or "")
    return result.returncode, failures, result.stdout[-4000:] + result.stderr[-2000:]


@contextmanager
def fault_proxy(upstream: str, fault: str, log: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fault_proxy",
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


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    from tests.conftest import server_factory

    with server_factory(tmp_path_factory.mktemp("upstream")) as make:
        yield make(UPSTREAM_ENV)


ProxyRun = Callable[..., tuple[int, dict[str, str], str]]


@pytest.fixture
def through_proxy(upstream: LocalServer, make_server: ServerFactory, tmp_path: Path) -> ProxyRun:
    """``run(fault, modules, fresh=False)``: contracts through a fault proxy (``fresh``: new upstream)."""

    def run(fault: str, modules: list[str], fresh: bool = False) -> tuple[int, dict[str, str], str]:
        server = make_server(UPSTREAM_ENV) if fresh else upstream
        with fault_proxy(server.base_url, fault, tmp_path / "proxy.log") as url:
            return run_contracts(url, modules, tmp_path)

    return run


# (fault, contract module, the test that must fail, words its message must contain, fresh upstream)
CASES = [
    ("health_slow", "test_health.py", "test_health_p95", "budget", False),
    ("health_missing_field", "test_health.py", "test_health_answers_200", "sth_count", False),
    ("no_429", "test_rate_limit.py", "test_the_request_after_the_budget", "expected 429", False),
    ("ws_close_1000", "test_ws_unauthorized.py", "test_bad_token_is_closed", "expected 4401", False),
    ("ack_reused_seq", "test_ws_ack.py", "test_pipelined_messages", "acks share a seq", False),
    ("dup_new_seq", "test_no_duplicates.py", "test_resend_on_one_connection", "different seqs", False),
    (
        "sth_bad_signature",
        "test_sth_chain.py",
        "test_new_sths_step_by_one",
        "signature does not verify",
        True,
    ),
    ("sth_index_skip", "test_sth_chain.py", "test_new_sths_step_by_one", "index jumps from 0 to 2", True),
]


@pytest.mark.parametrize(("fault", "module", "test", "words", "fresh"), CASES, ids=[c[0] for c in CASES])
def test_contract_fails_when_its_promise_is_broken(
    through_proxy: ProxyRun, fault: str, module: str, test: str, words: str, fresh: bool
) -> None:
    code, failures, output = through_proxy(fault, [module], fresh)
    assert code == 1, f"expected the contract to fail (exit 1), got {code}:\n{output}"
    failing = [name for name in failures if name.startswith(test)]
    assert failing, f"{test} did not fail; failures: {sorted(failures)}\n{output}"
    assert words in failures[failing[0]], f"{test} failed for another reason:\n{failures[failing[0]]}"


def test_auth_contract_fails_on_two_hour_tokens(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server({**UPSTREAM_ENV, "NEXO_ACCESS_TOKEN_TTL": "7200"})
    code, failures, output = run_contracts(server.base_url, ["test_auth.py"], tmp_path)
    assert code == 1, output
    assert "exp - iat = 7200 s" in failures.get("test_access_tokens_live_one_hour_and_name_the_issuer", ""), (
        output
    )


def test_auth_contract_fails_on_another_issuer(upstream: LocalServer, tmp_path: Path) -> None:
    code, failures, output = run_contracts(
        upstream.base_url, ["test_auth.py"], tmp_path, "--issuer", "nexo-prod"
    )
    assert code == 1, output
    assert "expected 'nexo-prod'" in failures.get(
        "test_access_tokens_live_one_hour_and_name_the_issuer", ""
    ), output


def test_every_contract_passes_through_a_transparent_proxy(through_proxy: ProxyRun) -> None:
    modules = sorted(p.name for p in (ROOT / "contracts").glob("test_*.py"))
    code, failures, output = through_proxy("none", modules)
    assert code == 0, f"contracts failed through the transparent proxy: {sorted(failures)}\n{output}"


def test_nexo_contracts_prints_one_line_per_promise(upstream: LocalServer, tmp_path: Path) -> None:
    xml = tmp_path / "report.xml"
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "nexo",
            "contracts",
            "--base-url",
            upstream.base_url,
            "-k",
            "health",
            "--junit-xml",
            str(xml),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "✓ Health" in good.stdout and "health p95 = " in good.stdout and "(budget 200 ms)" in good.stdout
    assert "promises: 1 kept, 0 broken, 0 skipped" in good.stdout, good.stdout
    report = ET.parse(xml).getroot()  # noqa: S314 - our own report
    assert any(p.get("name") == "figure" for p in report.iter("property")), "JUnit XML lacks the figures"
    with fault_proxy(upstream.base_url, "health_missing_field", tmp_path / "proxy.log") as url:
        bad = subprocess.run(
            [sys.executable, "-m", "nexo", "contracts", "--base-url", url, "-k", "health"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "✗ Health" in bad.stdout and "sth_count" in bad.stdout, bad.stdout
    assert "promises: 0 kept, 1 broken" in bad.stdout, bad.stdout
