"""The contract suite fails when a promise is broken (and passes when none is).

Each case puts ``tests/support/fault_proxy.py`` in front of a real Nexo, or starts a
deliberately misconfigured server or one patched by ``tests/support/broken_nexo.py``,
runs the matching contract module against it with ``pytest --base-url <url>
--allow-destructive`` in a subprocess, and checks that exactly the expected
contract test failed, for the expected reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from contracts.server import LocalServer, free_port
from contracts.tokens import SECRET_ENV, Minter, Secret
from tests.conftest import ServerFactory
from tests.support.proxy import fault_proxy

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
#: The upstream's budgets: generous for anonymous traffic (several suite runs share
#: one server and one address), and a per-user limit the suite is told about.
UPSTREAM_ENV = {"NEXO_AUTH_RATE_LIMIT": "1000/minute", "NEXO_RATE_LIMIT": "300/minute"}
SUITE_ARGS = ["--allow-destructive", "--rate-limit", "300", "--cleanup-timeout", "0"]


def run_contracts(
    base_url: str, modules: list[str], out: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """Run contract modules against ``base_url``; return (exit code, {failed test: message}, output).

    The output ends with the JUnit XML report, so a caller can check what it holds.
    """
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
        env={**os.environ, **(env or {})},
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
    report = xml.read_text() if xml.exists() else ""
    return result.returncode, failures, result.stdout[-4000:] + result.stderr[-2000:] + report


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
            # With the server's secret, as an operator proving expiry would run it.
            return run_contracts(url, modules, tmp_path, env=secret_of(server))

    return run


# (fault, contract module, the test that must fail, words its message must contain, fresh upstream)
CASES = [
    ("health_slow", "test_health.py", "test_health_p95", "budget", False),
    ("health_missing_field", "test_health.py", "test_health_answers_200", "sth_count", False),
    ("no_429", "test_rate_limit.py", "test_the_request_after_the_budget", "expected 429", False),
    ("ws_close_1000", "test_bad_tokens.py", "test_bad_token_is_refused", "expected 4401", False),
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
    (
        "health_slow_one_connection_in_twenty",
        "test_health.py",
        "test_health_p95",
        "budget",
        False,
    ),
    ("ack_drop_one_in_ten", "test_ws_ack.py", "test_sequential_messages", "message 10 of 30", False),
    # A fresh upstream: its log is empty when the suite starts, the case that used to prove nothing.
    ("inclusion_wrong", "test_sth_chain.py", "test_inclusion_proofs", "inclusion proof of leaf", True),
    ("consistency_wrong", "test_sth_chain.py", "test_consistency_proofs", "consistency proof", True),
    (
        "poison_spreads",
        "test_malformed_message.py",
        "test_a_malformed_message_among_valid_ones",
        "valid messages sent around a malformed one got errors",
        False,
    ),
    ("bad_input_500", "test_bad_input.py", "test_bad_parameters_get_a_4xx", "expected a 4xx", False),
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
            [sys.executable, "-m", "nexo", "contracts", "--base-url", url, "-k", "test_health or test_sth"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    # One broken thing, one broken promise, said in a sentence: the STH chain does not
    # trip over the missing field, and nothing prints a traceback or a bare KeyError.
    assert "✗ Health" in bad.stdout and "sth_count" in bad.stdout, bad.stdout
    assert "✓ STH chain" in bad.stdout and "not run: health has no sth_count" in bad.stdout, bad.stdout
    assert "promises: 1 kept, 1 broken" in bad.stdout, bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr and "KeyError" not in bad.stdout, bad.stdout


def grow_log(server: LocalServer, leaves: int) -> None:
    """Register ``leaves`` devices on ``server`` (a long log for the proof checks)."""
    import base64
    import secrets as random

    from contracts.client import Account

    account = Account.create(server.base_url)
    with httpx.Client(timeout=30, headers=account.headers) as client:
        for n in range(leaves):
            key = base64.b64encode(random.token_bytes(32)).decode()
            body = {"name": f"long-{n}", "public_key": key, "key_type": "ed25519"}
            response = client.post(server.base_url + "/api/devices", json=body)
            assert response.status_code == 201, response.text


def test_proof_checks_hold_and_catch_bad_proofs_on_a_long_log(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server({**UPSTREAM_ENV, "NEXO_RATE_LIMIT": "100000/minute"})
    grow_log(server, 300)
    code, failures, output = run_contracts(server.base_url, ["test_sth_chain.py"], tmp_path)
    assert code == 0, f"the STH contract failed on a healthy long log: {sorted(failures)}\n{output}"
    for fault, test, words in [
        ("inclusion_wrong", "test_inclusion_proofs", "inclusion proof of leaf"),
        ("consistency_wrong", "test_consistency_proofs", "consistency proof"),
    ]:
        with fault_proxy(server.base_url, fault, tmp_path / "proxy.log") as url:
            code, failures, output = run_contracts(url, ["test_sth_chain.py"], tmp_path)
        failing = [name for name in failures if name.startswith(test)]
        assert code == 1 and failing, f"{fault} on a long log: {sorted(failures)}\n{output}"
        assert words in failures[failing[0]], failures[failing[0]]


def broken_server(make_server: ServerFactory, name: str) -> LocalServer:
    """A Nexo patched by ``tests/support/broken_nexo.py`` with the break ``name``."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**UPSTREAM_ENV, "NEXO_TEST_BREAK": name, "PYTHONPATH": path}
    return make_server(env, module="tests.support.broken_nexo")


def secret_of(server: LocalServer) -> dict[str, str]:
    """What an operator sets to let the suite sign tokens for ``server``."""
    return {SECRET_ENV: server.env["JWT_SECRET"]}


EXPIRY_TESTS = [
    "test_an_expired_token_gets_401_over_http",
    "test_an_expired_token_is_closed_with_4401_on_a_new_websocket[header]",
    "test_an_expired_token_is_closed_with_4401_on_a_new_websocket[first-frame]",
    "test_an_open_connection_is_closed_with_4401_when_its_token_expires",
]


def test_expiry_contract_fails_when_tokens_never_expire(make_server: ServerFactory, tmp_path: Path) -> None:
    server = broken_server(make_server, "ignore_expiry")
    secret = secret_of(server)
    # Short waits: this server never closes, so each check waits out its whole timeout.
    quick = ("--clock-skew", "1", "--ws-timeout", "3")
    code, failures, output = run_contracts(server.base_url, ["test_expiry.py"], tmp_path, *quick, env=secret)
    assert code == 1, output
    assert sorted(failures) == sorted(EXPIRY_TESTS), f"{sorted(failures)}\n{output}"
    assert "expected 401" in failures[EXPIRY_TESTS[0]], failures[EXPIRY_TESTS[0]]
    assert "4401" in failures[EXPIRY_TESTS[1]], failures[EXPIRY_TESTS[1]]
    assert "kept the connection open" in failures[EXPIRY_TESTS[3]], failures[EXPIRY_TESTS[3]]
    assert secret[SECRET_ENV] not in output, "the signing secret appeared in the output or the report"


def test_expiry_is_proved_with_a_token_file_and_said_unproved_without_means(
    upstream: LocalServer, make_server: ServerFactory, tmp_path: Path
) -> None:
    from contracts.client import Account

    def expired_token_file(server: LocalServer) -> Path:
        minter = Minter(Secret(server.env["JWT_SECRET"]), "nexo")
        path = tmp_path / f"expired-{server.port}.txt"
        path.write_text(minter.expired(Account.create(server.base_url).access_token) + "\n")
        return path

    token_file = expired_token_file(upstream)
    code, failures, output = run_contracts(
        upstream.base_url, ["test_expiry.py"], tmp_path, "--expired-token-file", str(token_file)
    )
    assert code == 0 and not failures, output
    broken = broken_server(make_server, "ignore_expiry")
    code, failures, output = run_contracts(
        broken.base_url,
        ["test_expiry.py"],
        tmp_path,
        *("--expired-token-file", str(expired_token_file(broken)), "--ws-timeout", "3"),
    )
    assert code == 1 and EXPIRY_TESTS[0] in failures, output

    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    unproved = subprocess.run(
        [sys.executable, "-m", "nexo", "contracts", "--base-url", upstream.base_url, "-k", "expiry"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert unproved.returncode == 0, unproved.stdout + unproved.stderr
    assert "- JWT expiry" in unproved.stdout and "skipped: expiry not proved" in unproved.stdout, (
        unproved.stdout
    )
    assert SECRET_ENV in unproved.stdout, "the skip must say how to prove expiry"


def test_bad_token_contract_fails_when_the_http_guard_skips_signatures(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = broken_server(make_server, "http_skips_signature")
    code, failures, output = run_contracts(server.base_url, ["test_bad_tokens.py"], tmp_path)
    assert code == 1, output
    failed = sorted(failures)
    assert "test_bad_token_is_refused[tampered-signature-http]" in failed, f"{failed}\n{output}"
    assert "test_bad_token_is_refused[alg-none-http]" in failed, failed
    assert not [name for name in failed if "-ws-" in name], f"/ws still checks signatures: {failed}"
    assert (
        "tampered-signature: GET /api/me -> 200, expected 401"
        in failures["test_bad_token_is_refused[tampered-signature-http]"]
    )


def test_logout_contract_fails_when_open_sockets_outlive_the_session(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = broken_server(make_server, "sockets_outlive_logout")
    code, failures, output = run_contracts(server.base_url, ["test_logout.py"], tmp_path, "--ws-timeout", "3")
    assert code == 1, output
    message = failures.get("test_logout_ends_the_session_on_http_and_open_sockets", "")
    assert "kept the connection open" in message, f"{sorted(failures)}\n{output}"


def test_auth_budget_contract_fails_when_a_spelling_escapes_it(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = broken_server(make_server, "budget_by_raw_path")
    code, failures, output = run_contracts(server.base_url, ["test_auth_budget.py"], tmp_path)
    assert code == 1, output
    message = failures.get("test_every_spelling_of_an_auth_path_is_charged_to_the_auth_budget", "")
    assert "charged to another budget than auth: /api/auth/login/ " in message, (
        f"{sorted(failures)}\n{output}"
    )


def witness_key(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A new Ed25519 witness key: its PEM file (for the fault proxy) and its C2SP vkey."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path = tmp_path / "witness.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = hashlib.sha256(name.encode() + b"\n\x04" + public).digest()[:4]
    material = base64.b64encode(b"\x04" + public).decode()
    return path, f"{name}+{key_id.hex()}+{material}"


def test_witness_contract_verifies_the_cosignatures_it_is_shown(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    from tests.support.fault_proxy import WITNESS_NAME

    pem, vkey = witness_key(tmp_path, WITNESS_NAME)
    # The witness itself is unreachable: the cosignature lines come from the fault proxy,
    # made with the configured witness's key (valid) or broken on purpose.
    env = {**UPSTREAM_ENV, "NEXO_WITNESSES": f"http://127.0.0.1:{free_port()}/w {vkey}"}
    server = make_server(env)
    with fault_proxy(
        server.base_url, "client_cosign", tmp_path / "proxy.log", "--witness-key", str(pem)
    ) as url:
        code, failures, output = run_contracts(url, ["test_witness.py"], tmp_path)
    assert code == 0 and not failures, f"a valid cosignature by the configured witness was refused:\n{output}"
    assert f"witnesses seen: {WITNESS_NAME}" in output, output
    with fault_proxy(
        server.base_url, "client_bad_cosignature", tmp_path / "proxy.log", "--witness-key", str(pem)
    ) as url:
        code, failures, output = run_contracts(url, ["test_witness.py"], tmp_path)
    message = failures.get("test_the_checkpoint_is_cosigned_by_the_configured_quorum", "")
    assert code == 1 and "does not verify" in message, f"{sorted(failures)}\n{output}"
