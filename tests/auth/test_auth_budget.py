"""Hostile clients against the auth budget and the login lockout (issue 14, finding 4).

Every spelling of an auth path that Sanic routes to register, login or refresh is
charged to the auth budget, and concurrent wrong passwords for one username and
address are evaluated at most ``NEXO_LOGIN_LOCKOUT_THRESHOLD`` times per window,
on one worker and on two workers sharing PostgreSQL (docs/security.md).
"""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from contracts.client import Account, new_password
from contracts.server import LocalServer
from tests.conftest import BACKEND, REDIS_URL, ServerFactory

pytestmark = pytest.mark.server

AUTH_ROUTES = ("register", "login", "refresh")


def spellings(name: str) -> list[str]:
    """Raw request targets a client might try for ``/api/auth/<name>``."""
    return [
        f"/api/auth/{name}",
        f"/api/auth/{name}/",
        f"/api/auth/{name}//",
        f"//api/auth/{name}",
        f"/api//auth/{name}",
        f"/api/auth//{name}",
        f"/api/auth/./{name}",
        f"/api/x/../auth/{name}",
        f"/api/auth/{name}?x=1",
        f"/api/auth/{name}/?x=1",
        f"/api/auth/{name}%2F",
        f"/api/auth/%{ord(name[0]):02x}{name[1:]}",
        f"/API/auth/{name}",
    ]


def raw_post(server: LocalServer, target: str, body: dict[str, str]) -> tuple[int, dict[str, str]]:
    """POST with the request target exactly as given (no client-side normalisation)."""
    payload = json.dumps(body).encode()
    request = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head = b"".join(chunks).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers


@pytest.mark.parametrize("name", AUTH_ROUTES)
def test_every_spelling_routed_to_an_auth_endpoint_is_charged_to_the_auth_budget(
    server: LocalServer, name: str
) -> None:
    routed = 0
    for target in spellings(name):
        body = {"refresh_token": "x" * 20} if name == "refresh" else {"username": "", "password": ""}
        status, headers = raw_post(server, target, body)
        if status in (404, 405):
            continue  # not routed to the auth handler: nothing to escape to
        routed += 1
        policy = headers.get("ratelimit-policy", "")
        assert policy.startswith('"auth"'), (target, status, headers)
    assert routed >= 3  # at least the plain path, a trailing slash and a query string


def _wrong_passwords(server: LocalServer, username: str, attempts: int) -> list[int]:
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:

            async def one(i: int) -> int:
                response = await client.post(
                    "/api/auth/login", json={"username": username, "password": f"wrong-{i}-{new_password()}"}
                )
                return response.status_code

            return list(await asyncio.gather(*(one(i) for i in range(attempts))))

    return asyncio.run(run())


def _assert_at_most_ten_evaluated(server: LocalServer) -> None:
    account = Account.create(server.base_url)
    statuses = _wrong_passwords(server, account.username, 40)
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) <= 10, statuses
    assert statuses.count(429) >= 30, statuses
    # Locked out now, even with the right password.
    response = httpx.post(
        f"{server.base_url}/api/auth/login",
        json={"username": account.username, "password": account.password},
        timeout=30,
    )
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0


def test_40_concurrent_wrong_passwords_are_evaluated_at_most_10_times(server: LocalServer) -> None:
    _assert_at_most_ten_evaluated(server)


def test_40_concurrent_wrong_passwords_for_an_unknown_user_are_evaluated_at_most_10_times(
    server: LocalServer,
) -> None:
    statuses = _wrong_passwords(server, "nobody_" + new_password()[:8].lower().replace("-", "_"), 40)
    assert statuses.count(401) <= 10, statuses
    assert statuses.count(429) >= 30, statuses


@pytest.mark.skipif(BACKEND != "postgres", reason="several workers need PostgreSQL")
def test_40_concurrent_wrong_passwords_across_two_workers(make_server: ServerFactory) -> None:
    server = make_server({"REDIS_URL": REDIS_URL}, workers=2)
    _assert_at_most_ten_evaluated(server)


def test_a_right_password_clears_the_pending_failures(server: LocalServer) -> None:
    account = Account.create(server.base_url)
    statuses = _wrong_passwords(server, account.username, 5)
    assert statuses == [401] * 5
    account.relogin()
    # The five failures are forgotten: ten more wrong passwords are evaluated.
    statuses = _wrong_passwords(server, account.username, 12)
    assert statuses.count(401) == 10 and statuses.count(429) == 2, statuses
