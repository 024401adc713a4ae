"""Ids are never reused, and a deleted account leaves nothing live behind (issue 14, finding 5).

Attacks: a new account that gets the numeric id of a deleted one (after deleting the
newest account, after ``nexo db export``/``import``) and so reads its messages and
devices; a recipient cache that still maps a deleted username to its id; a device
registration racing ``DELETE /api/me`` that leaves an active key in the log for a
deleted user (docs/security.md "Ids are never reused").
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.client import Account
from contracts.server import LocalServer, run_nexo, scratch_postgres
from tests.conftest import BACKEND, REDIS_URL, ServerFactory, db_execute

pytestmark = pytest.mark.server


def _send(server: LocalServer, sender: Account, to: str, body: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/messages",
        json={"message_id": str(uuid.uuid4()), "to": to, "body": body},
        headers=sender.headers,
        timeout=30,
    )


def _device(server: LocalServer, account: Account) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/devices",
        json={
            "name": "phone",
            "public_key": base64.b64encode(os.urandom(32)).decode(),
            "key_type": "ed25519",
        },
        headers=account.headers,
        timeout=60,
    )


def _assert_sees_nothing_of(server: LocalServer, newcomer: Account, gone_ids: set[int]) -> None:
    assert newcomer.user_id not in gone_ids
    messages = httpx.get(f"{server.base_url}/api/messages?since=0", headers=newcomer.headers, timeout=30)
    assert messages.status_code == 200
    assert messages.json()["messages"] == []
    devices = httpx.get(f"{server.base_url}/api/devices", headers=newcomer.headers, timeout=30)
    assert devices.json()["devices"] == []


def _victim_with_history(server: LocalServer, peer: Account) -> Account:
    victim = Account.create(server.base_url)
    assert _send(server, peer, victim.username, "for the victim only").status_code == 201
    assert _send(server, victim, peer.username, "from the victim").status_code == 201
    assert _device(server, victim).status_code == 201
    return victim


def test_a_new_account_never_gets_the_id_of_the_deleted_newest_one(make_server: ServerFactory) -> None:
    server = make_server()
    peer = Account.create(server.base_url)
    victims = [_victim_with_history(server, peer) for _ in range(2)]
    for victim in victims:
        assert victim.delete() == 204
    server.stop()
    server.start()  # ids must not come back after a restart either
    newcomer = Account.create(server.base_url)
    assert newcomer.user_id > max(v.user_id for v in victims)
    _assert_sees_nothing_of(server, newcomer, {v.user_id for v in victims})


def _export_env(server: LocalServer) -> dict[str, str]:
    return {
        "JWT_SECRET": server.env["JWT_SECRET"],
        "NEXO_DATA_DIR": str(server.data_dir),
        "DATABASE_URL": server.env.get("DATABASE_URL", ""),
        "NEXO_SIGNING_KEY_FILE": server.env.get("NEXO_SIGNING_KEY_FILE")
        or str(server.data_dir / "sth_signing.key"),
    }


def _nexo(args: list[str], env: dict[str, str], cwd: Path) -> str:
    result = run_nexo(args, env, cwd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_ids_are_not_reused_after_export_and_import(tmp_path: Path, make_server: ServerFactory) -> None:
    server = make_server()
    peer = Account.create(server.base_url)
    victims = [_victim_with_history(server, peer) for _ in range(3)]
    for victim in victims[1:]:  # the two newest accounts go
        assert victim.delete() == 204
    server.stop()
    export = tmp_path / "e.jsonl.gz"
    source = _export_env(server)
    _nexo(["db", "export", "--out", str(export)], source, tmp_path)

    with scratch_postgres() as pg_url:
        for url in ("", pg_url):  # into SQLite, then into PostgreSQL
            moved = make_server(
                {"DATABASE_URL": url, "NEXO_SIGNING_KEY_FILE": source["NEXO_SIGNING_KEY_FILE"]}, start=False
            )
            _nexo(["db", "import", str(export)], {**source, **moved.env}, tmp_path)
            moved.start()
            newcomer = Account.create(moved.base_url)
            assert newcomer.user_id > victims[-1].user_id, (url or "sqlite", newcomer.user_id)
            _assert_sees_nothing_of(moved, newcomer, {v.user_id for v in victims})
            # A second round trip keeps the high-water mark (export from the imported copy).
            moved.stop()
            again = tmp_path / f"again-{len(url)}.jsonl.gz"
            _nexo(["db", "export", "--out", str(again)], {**source, **moved.env}, tmp_path)
            last = make_server(
                {"DATABASE_URL": "", "NEXO_SIGNING_KEY_FILE": source["NEXO_SIGNING_KEY_FILE"]}, start=False
            )
            _nexo(["db", "import", str(again)], {**source, **last.env}, tmp_path)
            last.start()
            assert Account.create(last.base_url).user_id > newcomer.user_id
            last.stop()


def test_db_push_repairs_a_database_imported_before_high_water_marks(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = make_server()
    peer = Account.create(server.base_url)
    victim = _victim_with_history(server, peer)  # the newest account
    assert victim.delete() == 204
    server.stop()
    # What the old import left behind: the sequence at the largest surviving id.
    if server.env.get("DATABASE_URL"):
        db_execute(
            server, "SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT MAX(id) FROM users))"
        )
    else:
        db_execute(
            server, "UPDATE sqlite_sequence SET seq = (SELECT MAX(id) FROM users) WHERE name = 'users'"
        )
    _nexo(["db", "push"], _export_env(server), tmp_path)
    server.start()
    newcomer = Account.create(server.base_url)
    _assert_sees_nothing_of(server, newcomer, {victim.user_id})


def _send_statuses(server: LocalServer, sender: Account, to: str, times: int) -> list[str]:
    codes = []
    for _ in range(times):
        with httpx.Client(timeout=30) as fresh:  # a new connection each: any worker may answer
            response = fresh.post(
                f"{server.base_url}/api/messages",
                json={"message_id": str(uuid.uuid4()), "to": to, "body": "hello?"},
                headers=sender.headers,
            )
        codes.append("stored" if response.status_code == 201 else response.json()["error"]["code"])
    return codes


def _assert_deleted_recipient_is_unknown_everywhere(server: LocalServer) -> None:
    sender, gone = Account.create(server.base_url), Account.create(server.base_url)
    assert set(_send_statuses(server, sender, gone.username, 12)) == {"stored"}  # cached everywhere
    assert gone.delete() == 204
    deadline = time.monotonic() + 1.0  # the deletion signal crosses workers within this (margin)
    while time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(_send_statuses(server, sender, gone.username, 12)) == {"unknown_recipient"}


def test_the_recipient_cache_forgets_a_deleted_account(server: LocalServer) -> None:
    _assert_deleted_recipient_is_unknown_everywhere(server)


@pytest.mark.skipif(BACKEND != "postgres", reason="several workers need PostgreSQL")
def test_every_worker_forgets_a_deleted_recipient(make_server: ServerFactory) -> None:
    _assert_deleted_recipient_is_unknown_everywhere(make_server({"REDIS_URL": REDIS_URL}, workers=2))


def _log_leaves(server: LocalServer) -> list[dict[str, Any]]:
    size = httpx.get(f"{server.base_url}/api/sth/latest", timeout=30).json()["tree_size"]
    leaves: list[dict[str, Any]] = []
    for start in range(0, size, 1000):
        end = min(size, start + 1000) - 1
        entries = httpx.get(f"{server.base_url}/api/log/entries?start={start}&end={end}", timeout=30).json()
        leaves += [json.loads(base64.b64decode(entry["leaf"])) for entry in entries["entries"]]
    return leaves


def _race_registrations_with_deletion(server: LocalServer, rounds: int, registrations: int) -> list[int]:
    victims = [Account.create(server.base_url) for _ in range(rounds)]

    async def one_round(victim: Account) -> None:
        async with httpx.AsyncClient(base_url=server.base_url, headers=victim.headers, timeout=60) as client:

            async def register(delay: float) -> int:
                await asyncio.sleep(delay)
                key = base64.b64encode(os.urandom(32)).decode()
                response = await client.post(
                    "/api/devices", json={"name": "racer", "public_key": key, "key_type": "x25519"}
                )
                return response.status_code

            async def delete() -> int:
                await asyncio.sleep(0.01)
                return (await client.delete("/api/me")).status_code

            results = await asyncio.gather(delete(), *(register(0.004 * i) for i in range(registrations)))
        assert results[0] == 204
        # A registration either landed before the deletion (then it is revoked) or is refused.
        assert set(results[1:]) <= {201, 401, 404}, results

    async def run() -> None:
        await asyncio.gather(*(one_round(victim) for victim in victims))

    asyncio.run(run())
    return [victim.user_id for victim in victims]


def _unrevoked_keys(leaves: list[dict[str, Any]], user_ids: set[int]) -> list[str]:
    active: set[str] = set()
    for leaf in leaves:
        if leaf["user_id"] not in user_ids:
            continue
        if leaf["action"] == "register":
            active.add(leaf["device_id"])
        else:
            active.discard(leaf["device_id"])
    return sorted(active)


def test_device_registration_racing_account_deletion_leaves_no_unrevoked_key(server: LocalServer) -> None:
    gone = _race_registrations_with_deletion(server, rounds=8, registrations=6)
    assert _unrevoked_keys(_log_leaves(server), set(gone)) == []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        asker = Account.create(server.base_url)
        for user_id in gone:
            # Nobody can list a deleted user's devices: the name is unknown.
            response = client.get(f"/api/users/u{user_id}/devices", headers=asker.headers)
            assert response.status_code == 404


@pytest.mark.skipif(BACKEND != "postgres", reason="several workers need PostgreSQL")
def test_registration_racing_deletion_across_two_workers(make_server: ServerFactory) -> None:
    server = make_server({"REDIS_URL": REDIS_URL}, workers=2)
    gone = _race_registrations_with_deletion(server, rounds=8, registrations=6)
    assert _unrevoked_keys(_log_leaves(server), set(gone)) == []
