"""``nexo-client``: the commands, flags, output and exit codes other tools script against."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.server import LocalServer, free_port
from tests.client.conftest import PASSWORD, new_name
from tests.support.proxy import fault_proxy

pytestmark = pytest.mark.server


def cli(*args: str, state: Path, server: str | None = None, stdin: str | None = None,
        password: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NEXO_PASSWORD"}
    if password is not None:
        env["NEXO_PASSWORD"] = password
    head = ["--state-dir", str(state)] + (["--server", server] if server else [])
    return subprocess.run(
        [sys.executable, "-m", "nexo_client", *head, *args], input=stdin, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )


def test_two_terminals_register_send_listen_verify_devices(nexo: LocalServer, tmp_path: Path) -> None:
    alice, bob = new_name("alice"), new_name("bob")
    a, b = tmp_path / "alice", tmp_path / "bob"
    done = cli("register", alice, "--password-stdin", state=a, server=nexo.base_url, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    done = cli("register", bob, state=b, server=nexo.base_url, password=PASSWORD)
    assert done.returncode == 0, done.stderr
    assert "verified in the log" in done.stdout
    again = cli("login", bob, state=b, password=PASSWORD)
    assert again.returncode == 0 and again.stdout.startswith(f"logged in as {bob}"), again.stderr

    # The server comes from the state directory from now on.
    sent = cli("send", bob, "hello", state=a)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("sent ")
    heard = cli("listen", "--count", "1", "--timeout", "30", state=b)
    assert heard.returncode == 0, heard.stderr
    assert heard.stdout.strip() == f"{alice}: hello ✓ verified"

    assert cli("send", bob, "again", "--json", state=a).returncode == 0
    heard = cli("--json", "listen", "--count", "1", "--timeout", "30", state=b)
    doc = json.loads(heard.stdout.strip())
    assert (doc["event"], doc["sender"], doc["text"], doc["verified"]) == ("message", alice, "again", True)

    report = cli("verify", bob, state=a)
    assert report.returncode == 0, report.stderr
    assert "2 active key(s)" in report.stdout and "signature ✓" in report.stdout
    assert "consistent with the last verified tree head" in report.stdout
    assert "witness cosignatures: none" in report.stdout
    doc = json.loads(cli("verify", bob, "--json", state=a).stdout)
    assert {d["key_type"] for d in doc["devices"]} == {"ed25519", "x25519"}

    devices = cli("--json", "devices", state=b)
    assert devices.returncode == 0
    key_types = sorted(json.loads(line)["key_type"] for line in devices.stdout.splitlines())
    assert key_types == ["ed25519", "x25519"]

    # Nothing more to hear: the timeout is reached before the count.
    assert cli("listen", "--count", "1", "--timeout", "1", state=b).returncode == 6
    assert cli("listen", "--timeout", "1", state=b).returncode == 0


def test_exit_codes(nexo: LocalServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    done = cli("send", "bob", "hi", state=empty, server=nexo.base_url)
    assert done.returncode == 4 and "NotLoggedIn" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, "one clear line, no traceback"

    done = cli("login", new_name(), state=empty, server=nexo.base_url, password="wrong password")
    assert done.returncode == 4 and "wrong username or password" in done.stderr

    done = cli("login", new_name(), state=empty, server=f"http://127.0.0.1:{free_port()}", password=PASSWORD)
    assert done.returncode == 5 and "ServerUnavailable" in done.stderr

    assert cli("listen", "--count", "x", state=empty).returncode == 2

    somebody = tmp_path / "me"
    done = cli("register", new_name(), state=somebody, server=nexo.base_url, password=PASSWORD)
    assert done.returncode == 0, done.stderr
    done = cli("send", "nobody_at_all", "hi", state=somebody)
    assert done.returncode == 1 and "UnknownUser" in done.stderr

    alice, bob = new_name("alice"), new_name("bob")
    for name in (bob, alice):
        done = cli("register", name, state=tmp_path / name, server=nexo.base_url, password=PASSWORD)
        assert done.returncode == 0, done.stderr
    with fault_proxy(nexo.base_url, "client_swap_key", tmp_path / "proxy.log") as url:
        done = cli("--json", "send", bob, "hi", state=tmp_path / alice, server=url)
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["error"] == "ProofInvalid"
