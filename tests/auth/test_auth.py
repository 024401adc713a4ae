"""Accounts and sessions against the real server (issue 3), on the selected backend."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import jwt
import pytest

from contracts.client import Account, new_password, new_username
from contracts.server import LocalServer, random_secret
from tests.conftest import ServerFactory

pytestmark = pytest.mark.server


def post(server: LocalServer, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=30, **kwargs)


def me(server: LocalServer, token: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.json()["error"]["code"] == "invalid_token"


# -- the happy path -------------------------------------------------------------------------


def test_register_login_me_refresh_logout(server: LocalServer) -> None:
    username, password = new_username(), new_password()
    created = post(server, "/api/auth/register", {"username": username.upper(), "password": password})
    assert created.status_code == 201
    user = created.json()["user"]
    assert user["username"] == username  # stored lowercased
    assert set(user) == {"id", "username", "created_at"}

    tokens = post(server, "/api/auth/login", {"username": username, "password": password}).json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert me(server, tokens["access_token"]).json()["user"]["id"] == user["id"]

    renewed = post(server, "/api/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    assert renewed.status_code == 200
    pair = renewed.json()
    assert pair["refresh_token"] != tokens["refresh_token"]
    assert me(server, pair["access_token"]).status_code == 200

    # The spent refresh token again: reuse detected, the whole session dies.
    assert_invalid_token(post(server, "/api/auth/refresh", {"refresh_token": tokens["refresh_token"]}))
    assert_invalid_token(post(server, "/api/auth/refresh", {"refresh_token": pair["refresh_token"]}))
    assert_invalid_token(me(server, pair["access_token"]))

    # A new login is a new session; logout ends it and its access token.
    second = post(server, "/api/auth/login", {"username": username, "password": password}).json()
    headers = {"Authorization": f"Bearer {second['access_token']}"}
    assert post(server, "/api/auth/logout", headers=headers).status_code == 200
    assert_invalid_token(me(server, second["access_token"]))
    assert_invalid_token(post(server, "/api/auth/refresh", {"refresh_token": second["refresh_token"]}))


def test_access_token_claims(server: LocalServer) -> None:
    account = Account.create(server.base_url)
    header = jwt.get_unverified_header(account.access_token)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    assert header["alg"] == "HS256" and header["kid"]
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["iss"] == "nexo"
    assert claims["sub"] == str(account.user_id)
    assert claims["typ"] == "access"
    assert claims["jti"]
    assert abs(claims["iat"] - time.time()) < 60


def test_logout_everywhere_ends_every_session(server: LocalServer) -> None:
    account = Account.create(server.base_url)
    other = post(
        server, "/api/auth/login", {"username": account.username, "password": account.password}
    ).json()
    response = post(server, "/api/auth/logout", {"everywhere": True}, headers=account.headers)
    assert response.json() == {"revoked_sessions": 2}
    assert_invalid_token(me(server, account.access_token))
    assert_invalid_token(me(server, other["access_token"]))


def test_delete_me_ends_the_account(server: LocalServer) -> None:
    account = Account.create(server.base_url)
    assert account.delete() == 204
    assert_invalid_token(me(server, account.access_token))
    response = post(server, "/api/auth/login", {"username": account.username, "password": account.password})
    assert response.status_code == 401
    # The name is free again.
    again = post(server, "/api/auth/register", {"username": account.username, "password": account.password})
    assert again.status_code == 201


def test_users_count_follows_registrations(server: LocalServer) -> None:
    def count() -> int:
        return int(httpx.get(f"{server.base_url}/api/health").json()["users_count"])

    time.sleep(0.6)  # let the 250 ms counter snapshot catch up with earlier tests
    before = count()
    account = Account.create(server.base_url)
    deadline = time.monotonic() + 5
    while count() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count() == before + 1
    account.delete()
    while count() > before and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    assert count() == before


# -- rejections ---------------------------------------------------------------------------


def test_usernames_are_unique_case_insensitively_under_concurrency(server: LocalServer) -> None:
    name = new_username()
    variants = [name, name.upper(), name.title()] * 4

    def attempt(username: str) -> int:
        return post(
            server, "/api/auth/register", {"username": username, "password": new_password()}
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(len(variants)) as pool:
        statuses = sorted(pool.map(attempt, variants))
    assert statuses == [201] + [409] * (len(variants) - 1)


def test_no_user_enumeration(server: LocalServer) -> None:
    account = Account.create(server.base_url)
    wrong = post(server, "/api/auth/login", {"username": account.username, "password": "not-the-password"})
    unknown = post(server, "/api/auth/login", {"username": new_username(), "password": "not-the-password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"username": "ab", "password": "long enough"}, 422, "validation_error"),
        ({"username": "has space", "password": "long enough"}, 422, "validation_error"),
        ({"username": "x" * 33, "password": "long enough"}, 422, "validation_error"),
        ({"username": "fine_name", "password": "short"}, 422, "validation_error"),
        ({"username": "fine_name", "password": "p" * 1025}, 400, "password_too_long"),
        ({"username": "fine_name"}, 422, "validation_error"),
        ({"username": 5, "password": "long enough"}, 422, "validation_error"),
        ({"username": "fine_name", "password": "long enough", "admin": True}, 422, "validation_error"),
        (["not", "an", "object"], 400, "invalid_json"),
    ],
)
def test_register_rejects_bad_input(server: LocalServer, body: Any, status: int, code: str) -> None:
    response = post(server, "/api/auth/register", body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("path", ["/api/auth/register", "/api/auth/login", "/api/auth/refresh"])
def test_invalid_json_and_oversized_bodies(server: LocalServer, path: str) -> None:
    bad = httpx.post(
        f"{server.base_url}{path}", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    empty = httpx.post(f"{server.base_url}{path}")
    assert empty.status_code == 400
    huge = httpx.post(f"{server.base_url}{path}", content=b"x" * (2 * 1024 * 1024))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"


def _forge(
    claims: dict[str, Any], key: str, *, alg: str = "HS256", headers: dict[str, Any] | None = None
) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


@pytest.fixture(scope="module")
def forgery_target(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server whose secret the test knows, so it can forge near-valid tokens."""
    from tests.conftest import server_factory

    secret = random_secret()
    with server_factory(tmp_path_factory.mktemp("forgery")) as make:
        server = make({"JWT_SECRET": secret})
        account = Account.create(server.base_url)
        claims = jwt.decode(account.access_token, options={"verify_signature": False})
        header = jwt.get_unverified_header(account.access_token)
        yield server, secret, claims, header, account


def _cases(
    secret: str, claims: dict[str, Any], header: dict[str, Any], account: Account
) -> dict[str, dict[str, str]]:
    now = int(time.time())
    kid = {"kid": header["kid"]}

    def signed(**changes: Any) -> str:
        body = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return _forge(body, secret, headers=kid)

    unsigned = jwt.encode({**claims}, key="", algorithm="none")
    head, payload, _ = account.access_token.split(".")
    return {
        "missing header": {},
        "wrong scheme": {"Authorization": f"Basic {account.access_token}"},
        "empty bearer": {"Authorization": "Bearer"},
        "malformed": {"Authorization": "Bearer not.a.jwt"},
        "garbage": {"Authorization": "Bearer abc"},
        "bad signature": {"Authorization": f"Bearer {_forge(claims, 'x' * 40, headers=kid)}"},
        "tampered payload": {
            "Authorization": f"Bearer {head}.{payload[:-2]}AA.{account.access_token.split('.')[2]}"
        },
        "alg none": {"Authorization": f"Bearer {unsigned}"},
        "HS512": {"Authorization": f"Bearer {_forge(claims, secret, alg='HS512', headers=kid)}"},
        "expired": {"Authorization": f"Bearer {signed(iat=now - 7200, exp=now - 3600)}"},
        "not yet valid": {"Authorization": f"Bearer {signed(nbf=now + 3600)}"},
        "wrong issuer": {"Authorization": f"Bearer {signed(iss='someone-else')}"},
        "no exp": {"Authorization": f"Bearer {signed(exp=None)}"},
        "no iat": {"Authorization": f"Bearer {signed(iat=None)}"},
        "no sub": {"Authorization": f"Bearer {signed(sub=None)}"},
        "no jti": {"Authorization": f"Bearer {signed(jti=None)}"},
        "no iss": {"Authorization": f"Bearer {signed(iss=None)}"},
        "refresh token as access": {"Authorization": f"Bearer {account.refresh_token}"},
        "wrong typ": {"Authorization": f"Bearer {signed(typ='refresh')}"},
        "unknown kid": {"Authorization": f"Bearer {_forge(claims, secret, headers={'kid': 'nope'})}"},
        "unknown user": {"Authorization": f"Bearer {signed(sub='999999999')}"},
    }


CASES = [
    "missing header", "wrong scheme", "empty bearer", "malformed", "garbage", "bad signature",
    "tampered payload", "alg none", "HS512", "expired", "not yet valid", "wrong issuer", "no exp",
    "no iat", "no sub", "no jti", "no iss", "refresh token as access", "wrong typ", "unknown kid",
    "unknown user",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_every_bad_token_is_401_invalid_token(forgery_target: Any, case: str) -> None:
    server, secret, claims, header, account = forgery_target
    headers = _cases(secret, claims, header, account)[case]
    response = httpx.get(f"{server.base_url}/api/me", headers=headers)
    assert_invalid_token(response)
    assert "Traceback" not in response.text
    # The genuine token still works, so the rejection was about the forgery.
    assert me(server, account.access_token).status_code == 200


def test_deleted_users_token_is_refused(forgery_target: Any) -> None:
    server = forgery_target[0]
    account = Account.create(server.base_url)
    token = account.access_token
    assert account.delete() == 204
    assert_invalid_token(me(server, token))


# -- rotation and lockout -------------------------------------------------------------------


def test_secret_rotation_keeps_old_tokens_until_the_old_secret_is_removed(make_server: ServerFactory) -> None:
    old, new = random_secret(), random_secret()
    first = make_server({"JWT_SECRET": old})
    account = Account.create(first.base_url)
    database_url = first.env.get("DATABASE_URL")
    shared = {
        "NEXO_DATA_DIR": str(first.data_dir),
        **({"DATABASE_URL": database_url} if database_url else {}),
    }
    first.stop()

    rotated = make_server({**shared, "JWT_SECRET": new, "JWT_PREVIOUS_SECRETS": old})
    assert me(rotated, account.access_token).status_code == 200
    fresh = post(
        rotated, "/api/auth/login", {"username": account.username, "password": account.password}
    ).json()
    assert (
        jwt.get_unverified_header(fresh["access_token"])["kid"]
        != jwt.get_unverified_header(account.access_token)["kid"]
    )
    rotated.stop()

    retired = make_server({**shared, "JWT_SECRET": new})
    assert_invalid_token(me(retired, account.access_token))
    assert me(retired, fresh["access_token"]).status_code == 200


def test_lockout_after_failures_even_with_the_right_password(make_server: ServerFactory) -> None:
    server = make_server({"NEXO_LOGIN_LOCKOUT_THRESHOLD": "3", "NEXO_LOGIN_LOCKOUT_WINDOW": "3"})
    account = Account.create(server.base_url)
    creds = {"username": account.username, "password": account.password}
    for _ in range(3):
        assert post(server, "/api/auth/login", {**creds, "password": "wrong-password"}).status_code == 401
    locked = post(server, "/api/auth/login", creds)
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "too_many_failed_logins"
    assert 1 <= int(locked.headers["retry-after"]) <= 3
    # Another username from the same address is not locked.
    other = Account.create(server.base_url)
    assert (
        post(server, "/api/auth/login", {"username": other.username, "password": other.password}).status_code
        == 200
    )
    time.sleep(3.2)
    assert post(server, "/api/auth/login", creds).status_code == 200
    log = server.log_text()
    assert f"failed login username={account.username}" in log
    assert account.password not in log
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'nexo_failed_logins_total{reason="wrong_password"} 3.0' in metrics
