"""``nexo audit`` on a real log: clean chains pass, and each kind of tampering is named."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.client import Account
from contracts.server import LocalServer, run_nexo
from nexo.transparency import sth as sth_mod
from nexo.transparency.sth import SignedTreeHead
from tests.conftest import ServerFactory, db_execute
from tests.support.audit import audit, audit_env

pytestmark = pytest.mark.server

FAST_LIMITS = {"NEXO_RATE_LIMIT": "1000000/minute", "NEXO_AUTH_RATE_LIMIT": "100000/minute"}
DEVICES = 6


def build_log(make_server: ServerFactory) -> LocalServer:
    """STH 0 plus one STH per registration: STH i holds i leaves (i = 1..DEVICES)."""
    server = make_server(FAST_LIMITS)
    account = Account.create(server.base_url)
    for n in range(DEVICES):
        response = httpx.post(
            f"{server.base_url}/api/devices",
            json={
                "name": f"d{n}",
                "public_key": base64.b64encode(os.urandom(32)).decode(),
                "key_type": "x25519",
            },
            headers=account.headers,
            timeout=10,
        )
        assert response.status_code == 201, response.text
    return server


def kinds(report: dict[str, Any]) -> set[tuple[str, int, str]]:
    return {(a["subject"], a["index"], a["kind"]) for a in report["anomalies"]}


def sth_at(server: LocalServer, index: int) -> SignedTreeHead:
    return SignedTreeHead.from_json(httpx.get(f"{server.base_url}/api/sth/{index}", timeout=10).json())


def test_clean_log_passes_locally_and_remotely(make_server: ServerFactory) -> None:
    server = build_log(make_server)
    code, _, report = audit(server)
    assert code == 0 and report["clean"], report
    assert report["sths"] == DEVICES + 1 and report["leaves"] == DEVICES
    assert report["consistency_proofs"] == DEVICES - 1
    code, _, remote = audit(server, remote=True)
    assert code == 0 and remote["clean"] and remote["leaves"] == DEVICES
    assert remote["consistency_proofs"] == DEVICES - 1  # read ahead, every one verified
    plain = run_nexo(["audit"], audit_env(server), server.data_dir)
    assert plain.returncode == 0 and "the chain is intact" in plain.stdout


def test_edited_leaf_is_named(make_server: ServerFactory) -> None:
    server = build_log(make_server)
    db_execute(server, "UPDATE log_leaves SET leaf = ? WHERE leaf_index = 2", (b'{"action":"register"}',))
    code, _, report = audit(server)
    assert code == 1
    found = kinds(report)
    assert ("leaf", 2, "leaf_hash_mismatch") in found
    assert {("sth", i, "root_mismatch") for i in range(3, DEVICES + 1)} <= found
    code, _, remote = audit(server, remote=True)
    assert code == 1 and ("sth", 3, "root_mismatch") in kinds(remote)


def test_deleted_sth_is_named(make_server: ServerFactory) -> None:
    server = build_log(make_server)
    server.stop()
    db_execute(server, 'DELETE FROM sths WHERE "index" = 3')
    code, _, report = audit(server)
    assert code == 1
    assert {("sth", 4, "index_gap"), ("sth", 4, "broken_link")} <= kinds(report)


def test_reordered_sths_are_named(make_server: ServerFactory) -> None:
    server = build_log(make_server)
    server.stop()
    db_execute(server, 'UPDATE sths SET "index" = -1 WHERE "index" = 2')
    db_execute(server, 'UPDATE sths SET "index" = 2 WHERE "index" = 3')
    db_execute(server, 'UPDATE sths SET "index" = 3 WHERE "index" = -1')
    code, _, report = audit(server)
    assert code == 1
    found = kinds(report)
    assert {("sth", 2, "bad_signature"), ("sth", 3, "bad_signature"), ("sth", 3, "size_decreased")} <= found
    assert ("sth", 2, "broken_link") in found


def test_changed_root_is_named(make_server: ServerFactory) -> None:
    server = build_log(make_server)
    db_execute(server, 'UPDATE sths SET root_hash = ? WHERE "index" = 4', (os.urandom(32),))
    code, _, report = audit(server)
    assert code == 1
    found = kinds(report)
    assert {("sth", 4, "bad_signature"), ("sth", 4, "root_mismatch"), ("sth", 4, "inconsistent")} <= found
    assert ("sth", 5, "broken_link") in found
    code, _, remote = audit(server, remote=True)  # proofs fetched ahead fail just the same
    assert code == 1
    expected = {("sth", 4, "root_mismatch"), ("sth", 4, "inconsistent"), ("sth", 5, "inconsistent")}
    assert expected <= kinds(remote)


def test_resigned_with_another_key_is_named(make_server: ServerFactory) -> None:
    server = build_log(make_server)
    original = sth_at(server, DEVICES)
    forged = sth_mod.sign(original.head, Ed25519PrivateKey.generate())
    db_execute(
        server,
        'UPDATE sths SET signature = ?, sth_hash = ? WHERE "index" = ?',
        (forged.signature, forged.sth_hash, DEVICES),
    )
    code, _, report = audit(server)
    assert code == 1
    assert kinds(report) == {("sth", DEVICES, "bad_signature")}
    code, _, remote = audit(server, remote=True)
    assert ("sth", DEVICES, "bad_signature") in kinds(remote)


def test_fork_at_an_index_is_named_with_a_remembered_checkpoint(make_server: ServerFactory) -> None:
    server = build_log(make_server)
    checkpoint = server.data_dir / "audit-checkpoint.json"
    code, _, _ = audit(server, "--checkpoint", str(checkpoint))
    assert code == 0 and json.loads(checkpoint.read_text())["index"] == DEVICES
    server.stop()
    # Rewrite history from STH 4 on: drop STHs 4.., leaves 3.. and every node covering them.
    keep = 3
    db_execute(server, 'DELETE FROM sths WHERE "index" > ?', (keep,))
    db_execute(server, "DELETE FROM log_leaves WHERE leaf_index >= ?", (keep,))
    db_execute(
        server,
        "DELETE FROM log_nodes WHERE (((key & 281474976710655) + 1) << CAST((key >> 48) AS INTEGER)) > ?",
        (keep,),
    )
    db_execute(server, "DELETE FROM devices WHERE leaf_index >= ?", (keep,))
    server.start()
    account = Account.create(server.base_url)
    for n in range(DEVICES):
        response = httpx.post(
            f"{server.base_url}/api/devices",
            json={
                "name": f"f{n}",
                "public_key": base64.b64encode(os.urandom(32)).decode(),
                "key_type": "ed25519",
            },
            headers=account.headers,
            timeout=10,
        )
        assert response.status_code == 201
    code, _, fresh = audit(server)
    assert fresh["clean"]
    assert code == 0, "the rewritten log is self-consistent: only a remembered STH reveals the fork"
    code, _, report = audit(server, "--checkpoint", str(checkpoint))
    assert code == 1
    assert ("sth", DEVICES, "fork") in kinds(report)
    code, _, remote = audit(server, "--checkpoint", str(checkpoint), remote=True)
    assert code == 1 and ("sth", DEVICES, "fork") in kinds(remote)


def test_audit_text_output_names_anomalies(make_server: ServerFactory, tmp_path: Path) -> None:
    server = build_log(make_server)
    server.stop()
    db_execute(server, 'DELETE FROM sths WHERE "index" = 2')
    result = run_nexo(["audit"], audit_env(server), server.data_dir)
    assert result.returncode == 1
    assert "ANOMALY STH 3: index_gap" in result.stdout
    assert "anomalies" in result.stdout.splitlines()[-1]
    missing = run_nexo(["audit"], {"NEXO_DATA_DIR": str(tmp_path / "none"), "DATABASE_URL": ""}, tmp_path)
    assert missing.returncode == 2 and "nexo:" in missing.stderr
