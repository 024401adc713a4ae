"""HTTP message endpoints (DESIGN.md "HTTP API"), on the selected backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contracts.client import Account
from contracts.server import LocalServer
from tests.conftest import server_factory
from tests.support.realtime import FAST_ENV, account, count_rows

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with server_factory(tmp_path_factory.mktemp("messages")) as make:
        yield make(FAST_ENV)


def post(server: LocalServer, who: Account | None, body: Any) -> httpx.Response:
    headers = who.headers if who else {}
    return httpx.post(f"{server.base_url}/api/messages", json=body, headers=headers, timeout=10)


def get(server: LocalServer, who: Account | None, path: str, **params: Any) -> httpx.Response:
    headers = who.headers if who else {}
    return httpx.get(f"{server.base_url}{path}", params=params, headers=headers, timeout=10)


def test_post_stores_once_and_answers_duplicates_with_the_original(http_server: LocalServer) -> None:
    alice, bob = account(http_server), account(http_server)
    mid = str(uuid.uuid4())
    body = {"message_id": mid, "to": bob.username.upper(), "body": "hi bob"}
    first = post(http_server, alice, body)
    assert first.status_code == 201
    stored = first.json()
    assert set(stored) == {"message_id", "seq", "server_ts", "duplicate"}
    assert stored["duplicate"] is False and stored["message_id"] == mid
    again = post(http_server, alice, body)
    assert again.status_code == 200
    assert again.json() == {**stored, "duplicate": True}
    assert count_rows(http_server, mid) == 1

    conflict = post(http_server, alice, {**body, "body": "something else"})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "message_id_conflict"
    assert "hi bob" not in conflict.text
    thief = post(http_server, account(http_server), body)
    assert thief.status_code == 409 and "seq" not in thief.text


def test_get_one_is_for_sender_and_recipient_only(http_server: LocalServer) -> None:
    alice, bob, eve = account(http_server), account(http_server), account(http_server)
    mid = str(uuid.uuid4())
    seq = post(http_server, alice, {"message_id": mid, "to": bob.username, "body": "private"}).json()["seq"]
    for who in (alice, bob):
        got = get(http_server, who, f"/api/messages/{mid}")
        assert got.status_code == 200
        message = got.json()
        assert message["from"] == alice.username and message["to"] == bob.username
        assert message["body"] == "private" and message["seq"] == seq and message["delivered_at"] is None
    for path in (f"/api/messages/{mid}", f"/api/messages/{uuid.uuid4()}", "/api/messages/not-a-uuid"):
        missing = get(http_server, eve, path)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert get(http_server, None, f"/api/messages/{mid}").status_code == 401


def test_list_since_and_limit(http_server: LocalServer) -> None:
    alice, bob, carol = account(http_server), account(http_server), account(http_server)
    seqs = [
        post(http_server, a, {"message_id": str(uuid.uuid4()), "to": b.username, "body": f"m{i}"}).json()[
            "seq"
        ]
        for i, (a, b) in enumerate([(alice, bob), (bob, alice), (carol, bob), (alice, carol)])
    ]
    listed = get(http_server, alice, "/api/messages").json()["messages"]
    assert [m["seq"] for m in listed] == [seqs[0], seqs[1], seqs[3]]  # sent and received, ascending
    assert set(listed[0]) == {"message_id", "from", "to", "body", "seq", "server_ts", "delivered_at"}
    later = get(http_server, alice, "/api/messages", since=seqs[0]).json()["messages"]
    assert [m["seq"] for m in later] == [seqs[1], seqs[3]]
    assert [m["seq"] for m in get(http_server, alice, "/api/messages", limit=1).json()["messages"]] == [
        seqs[0]
    ]
    for params in ({"since": -1}, {"limit": 0}, {"limit": 5000}, {"since": "x"}):
        bad = get(http_server, alice, "/api/messages", **params)
        assert bad.status_code == 400, params


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"message_id": "nope", "to": "x", "body": "b"}, 422, "invalid_message_id"),
        ({"message_id": str(uuid.uuid4()), "to": "nobody_at_all_xyz", "body": "b"}, 422, "unknown_recipient"),
        (
            {"message_id": str(uuid.uuid4()), "to": "RECIPIENT", "body": "x" * (64 * 1024 + 1)},
            413,
            "body_too_large",
        ),
        ({"message_id": str(uuid.uuid4()), "to": "RECIPIENT", "body": 5}, 422, "validation_error"),
        ({"message_id": str(uuid.uuid4()), "to": "RECIPIENT"}, 422, "validation_error"),
        (
            {"message_id": str(uuid.uuid4()), "to": "RECIPIENT", "body": "b", "extra": 1},
            422,
            "validation_error",
        ),
    ],
)
def test_post_rejects_bad_input_and_stores_nothing(
    http_server: LocalServer, body: dict[str, Any], status: int, code: str
) -> None:
    alice, bob = account(http_server), account(http_server)
    if body.get("to") == "RECIPIENT":
        body = {**body, "to": bob.username}
    answer = post(http_server, alice, body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert get(http_server, alice, "/api/messages").json()["messages"] == []


def test_post_needs_a_token(http_server: LocalServer) -> None:
    answer = post(http_server, None, {"message_id": str(uuid.uuid4()), "to": "x", "body": "b"})
    assert answer.status_code == 401


def test_openapi_describes_the_message_routes(http_server: LocalServer) -> None:
    paths = httpx.get(f"{http_server.base_url}/docs/openapi.json", timeout=10).json()["paths"]
    assert {"/api/messages", "/api/messages/{message_id}"} <= set(paths)
    assert "post" in paths["/api/messages"] and "get" in paths["/api/messages"]
