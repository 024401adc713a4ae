"""Nexo's witness client against an independent witness (``aics-witness`` from PyPI, a real
process, tests/support/aics.py): first submission from size 0, growth, the 409 path, a
forged fork refused and never cosigned, cosignatures checked here from the C2SP text
(``cosignature/v1``, key ID type 0x04) and by ``aics-tlog``, and several submitters on one
PostgreSQL database never sending inconsistent checkpoints."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contracts.client import Account
from contracts.server import LocalServer, random_secret, run_nexo
from nexo.transparency import sth as sth_mod
from nexo.transparency.keys import read_key
from tests.conftest import ServerFactory
from tests.support import aics
from tests.support.aics import AicsWitness
from tests.support.audit import audit_env
from tests.support.devices import FAST_LIMITS, new_key, register_many
from tests.support.log_writer import Tree, grow, log_vkey

pytestmark = pytest.mark.server

INTERVAL = "0.3"


@pytest.fixture
def witnesses(tmp_path: Path) -> Iterator[Callable[[str], AicsWitness]]:
    made: list[AicsWitness] = []

    def make(name: str) -> AicsWitness:
        witness = AicsWitness(tmp_path / name.replace("/", "_"), name)
        made.append(witness)
        return witness

    aics.venv_bin()
    yield make
    for witness in made:
        witness.stop()


def _env(*ws: AicsWitness, quorum: int | None = None) -> dict[str, str]:
    env = {
        **FAST_LIMITS,
        "JWT_SECRET": random_secret(),
        "NEXO_WITNESSES": ", ".join(f"{w.url} {w.vkey}" for w in ws),
        "NEXO_WITNESS_INTERVAL": INTERVAL,
    }
    if quorum is not None:
        env["NEXO_WITNESS_QUORUM"] = str(quorum)
    return env


def _log_key(server: LocalServer) -> tuple[str, bytes, str]:
    key = httpx.get(f"{server.base_url}/api/log/key", timeout=10).json()
    public = base64.b64decode(key["public_key"])
    return key["origin"], public, log_vkey(key["origin"], public)


def _checkpoint(server: LocalServer) -> tuple[str, int, int]:
    response = httpx.get(f"{server.base_url}/api/log/checkpoint", timeout=10)
    assert response.status_code == 200
    return (
        response.text,
        int(response.headers["nexo-checkpoint-index"]),
        int(response.headers["nexo-checkpoint-cosignatures"]),
    )


def _wait_cosigned(server: LocalServer, index: int, count: int = 1, timeout: float = 30) -> str:
    """The served checkpoint once it is STH ``index`` or later with ``count`` cosignatures."""
    deadline = time.monotonic() + timeout
    note, served, cosigs = _checkpoint(server)
    while time.monotonic() < deadline:
        note, served, cosigs = _checkpoint(server)
        if served >= index and cosigs >= count:
            return note
        time.sleep(0.2)
    raise AssertionError(f"STH {index} not cosigned {count}x in {timeout} s (served {served}, {cosigs})")


def _check_cosignature(note: str, witness: AicsWitness) -> int:
    """Verify the witness's line from the C2SP text alone; return its timestamp."""
    body, _, signatures = note.partition("\n\n")
    name, key_id_hex, material = witness.vkey.split("+", 2)
    raw = base64.b64decode(material)
    assert raw[0] == 0x04 and len(raw) == 33
    assert hashlib.sha256(name.encode() + b"\n\x04" + raw[1:]).digest()[:4].hex() == key_id_hex
    lines = [line for line in signatures.splitlines() if line.startswith(f"\u2014 {name} ")]
    assert len(lines) == 1, signatures
    blob = base64.b64decode(lines[0].split(" ")[2])
    assert blob[:4].hex() == key_id_hex and len(blob) == 76
    (timestamp,) = struct.unpack(">Q", blob[4:12])
    assert abs(timestamp - time.time()) < 300
    message = b"cosignature/v1\n" + f"time {timestamp}\n".encode() + (body + "\n").encode()
    Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[12:], message)
    return timestamp


def _aics_verify(tmp_path: Path, note: str, log_vkey_text: str, *ws: AicsWitness, quorum: int = 1) -> None:
    path = tmp_path / "note"
    path.write_text(note)
    keys = [arg for w in ws for arg in ("--witness-key", w.vkey)]
    done = subprocess.run(
        [aics.tool("aics-tlog"), "verify-checkpoint", "--note", str(path), "--log-key", log_vkey_text,
         *keys, "--quorum", str(quorum)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _register(server: LocalServer, account: Account, n: int) -> dict[str, Any]:
    response = httpx.post(
        f"{server.base_url}/api/devices",
        json={"name": f"d{n}", "public_key": new_key(), "key_type": "ed25519"},
        headers=account.headers,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_first_submission_growth_and_cosignatures_that_verify(
    make_server: ServerFactory, witnesses: Callable[[str], AicsWitness], tmp_path: Path
) -> None:
    witness = witnesses("witness.test/w1")
    server = make_server(_env(witness, quorum=1))
    origin, _, vkey = _log_key(server)
    witness.trust(origin, vkey)
    witness.start()
    # First submission: "old 0" and no proof; the witness cosigns STH 0 (or a later one).
    note = _wait_cosigned(server, 0)
    _check_cosignature(note, witness)
    _aics_verify(tmp_path, note, vkey, witness)
    # Growth: each new checkpoint comes with a consistency proof from what the witness holds.
    account = Account.create(server.base_url)
    for n in range(3):
        body = _register(server, account, n)
        note = _wait_cosigned(server, body["sth"]["index"])
        stamp = _check_cosignature(note, witness)
        _aics_verify(tmp_path, note, vkey, witness)
    served = int(note.split("\n")[3])
    sth = httpx.get(f"{server.base_url}/api/sth/{served}", timeout=10).json()
    assert [c["witness"] for c in sth["cosignatures"]] == [witness.name]
    assert sth["cosignatures"][0]["timestamp"] == stamp
    assert sth["cosignatures"][0]["line"] in note
    tiles_note = httpx.get(f"{server.base_url}/tlog/checkpoint", timeout=10).text
    assert tiles_note == note
    assert witness.evidence() == []
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert f'nexo_witness_submissions_total{{outcome="cosigned",witness="{witness.name}"}}' in metrics
    # nexo audit checks every stored cosignature against the configured keys.
    env = {**audit_env(server), "NEXO_WITNESSES": server.env["NEXO_WITNESSES"], "NEXO_WITNESS_QUORUM": "1"}
    result = run_nexo(["audit", "--json", "--url", server.base_url], env, server.data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["cosigned_sths"] >= 4 and report["latest_quorum_index"] == served
    result = run_nexo(["audit"], env, server.data_dir)
    assert result.returncode == 0 and "quorum" in result.stdout, result.stdout + result.stderr
    # The contract suite's promise, against this server: kept, naming the witness it saw.
    result = run_nexo(["contracts", "--base-url", server.base_url, "-k", "quorum"], {}, tmp_path, timeout=600)
    line = next(li for li in result.stdout.splitlines() if "cosigned by the configured quorum" in li)
    assert line.startswith("✓") and f"witnesses seen: {witness.name}; quorum 1" in line, result.stdout


def test_a_conflict_409_is_resent_from_the_witness_size(
    make_server: ServerFactory, witnesses: Callable[[str], AicsWitness]
) -> None:
    witness = witnesses("witness.test/pinned")
    server = make_server(_env(witness))
    origin, _, vkey = _log_key(server)
    account = Account.create(server.base_url)
    pinned = [_register(server, account, n) for n in range(3)][-1]["sth"]
    # The witness starts pinned at size 3: Nexo's "old 0" gets 409 with "3\n".
    witness.trust(origin, vkey, initial=(pinned["tree_size"], pinned["root_hash"]))
    witness.start()
    later = _register(server, account, 9)
    _wait_cosigned(server, later["sth"]["index"])
    log_text = witness.log_text()
    assert "409" in log_text, log_text[-3000:]
    assert _states(server)[witness.name]["size"] == later["sth"]["tree_size"]
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    counter = f'nexo_witness_submissions_total{{outcome="conflict",witness="{witness.name}"}} '
    conflicts = [float(li.removeprefix(counter)) for li in metrics.splitlines() if li.startswith(counter)]
    assert conflicts and conflicts[0] >= 1, "the 409 was not counted"


def _states(server: LocalServer) -> dict[str, dict[str, Any]]:
    url = server.env.get("DATABASE_URL")
    if url:
        import asyncpg

        async def read() -> list[Any]:
            conn = await asyncpg.connect(url)
            try:
                return [dict(r) for r in await conn.fetch("SELECT * FROM witness_states")]
            finally:
                await conn.close()

        rows = asyncio.run(read())
    else:
        import sqlite3

        with sqlite3.connect(server.data_dir / "nexo.db") as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM witness_states")]
    return {row["name"]: row for row in rows}


def test_a_forged_fork_is_refused_and_never_cosigned(
    make_server: ServerFactory, witnesses: Callable[[str], AicsWitness], tmp_path: Path
) -> None:
    witness = witnesses("witness.test/forks")
    server = make_server(_env(witness))
    origin, public, vkey = _log_key(server)
    witness.trust(origin, vkey)
    witness.start()
    tree = Tree()
    honest = grow(server, tree, 10)
    _wait_cosigned(server, honest.index)
    # 1. Anyone holding the log key re-signs a different root at the same size: refused.
    key_file = Path(server.env.get("NEXO_SIGNING_KEY_FILE") or server.data_dir / "sth_signing.key")
    key = read_key(key_file)
    forged = sth_mod.sign(sth_mod.next_head(honest, 10, b"\x07" * 32, honest.timestamp_ms + 5), key)
    body = f"old 10\n\n{sth_mod.signed_note(forged, public)}".encode()
    response = httpx.post(f"{witness.url}/add-checkpoint", content=body, timeout=10)
    assert response.status_code in (409, 422), response.text
    # 2. The log itself signs a fork (a wrong root at a larger size) and Nexo submits it
    #    with a proof from the honest tree: the witness refuses it, Nexo records why.
    fork = grow(server, tree, 20, root=b"\x09" * 32)
    deadline = time.monotonic() + 30
    state = _states(server)[witness.name]
    while time.monotonic() < deadline and not (state["last_error"] or "").startswith("inconsistent"):
        time.sleep(0.2)
        state = _states(server)[witness.name]
    assert (state["last_error"] or "").startswith("inconsistent"), state
    assert state["cosigned_index"] == honest.index and state["size"] == 10
    _, served, cosigs = _checkpoint(server)
    assert served == honest.index and cosigs == 1, "the fork must never be served as cosigned"
    sth = httpx.get(f"{server.base_url}/api/sth/{fork.index}", timeout=10).json()
    assert "cosignatures" not in sth
    assert len(witness.evidence()) >= 1  # the witness kept the log-signed fork as evidence
    assert "/add-checkpoint -> 422" in witness.log_text()
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert f'nexo_witness_submissions_total{{outcome="inconsistent",witness="{witness.name}"}}' in metrics
    env = {**audit_env(server), "NEXO_WITNESSES": server.env["NEXO_WITNESSES"]}
    doctor = run_nexo(["doctor", "--url", server.base_url], {**server.env, **env}, tmp_path, timeout=120)
    assert "✗ Witnesses cosigning" in doctor.stdout and "inconsistent" in doctor.stdout, doctor.stdout


def test_two_workers_and_two_instances_on_postgresql_submit_one_consistent_history(
    make_server: ServerFactory, witnesses: Callable[[str], AicsWitness], pg_url: str, tmp_path: Path
) -> None:
    first_witness, second_witness = witnesses("witness.test/a"), witnesses("witness.test/b")
    env = {**_env(first_witness, second_witness, quorum=2), "DATABASE_URL": pg_url}
    first = make_server(env, workers=2)
    second = make_server(env, workers=2)
    origin, _, vkey = _log_key(first)
    for witness in (first_witness, second_witness):
        witness.trust(origin, vkey)
        witness.start()
    started_ms = time.time() * 1000
    accounts = [Account.create(first.base_url) for _ in range(4)]

    async def both() -> list[dict[str, Any]]:
        a, b = await asyncio.gather(
            register_many(first.base_url, accounts[:2], 15),
            register_many(second.base_url, accounts[2:], 15),
        )
        return a + b

    for _ in range(3):  # registrations while the submitters run
        asyncio.run(both())
        time.sleep(0.5)
    latest = httpx.get(f"{first.base_url}/api/sth/latest", timeout=10).json()
    note = _wait_cosigned(second, latest["index"], count=2)
    _aics_verify(tmp_path, note, vkey, first_witness, second_witness, quorum=2)
    for witness in (first_witness, second_witness):
        _check_cosignature(note, witness)
        assert witness.evidence() == [], "a submitter sent an inconsistent checkpoint"
        assert "-> 422" not in witness.log_text()  # its access log: "http: POST /add-checkpoint -> 422"
    # The only failures: submissions before the witnesses listened.
    for state in _states(first).values():
        assert state["last_error_ms"] < started_ms, state
