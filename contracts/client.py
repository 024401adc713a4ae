"""A black-box client of Nexo's account API (httpx only, nothing from ``nexo``).

Used by the contract suite and the tests to get throwaway users and tokens.
Usernames start with a recognisable prefix and a random part, so a run can
only ever touch users it created.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx

PREFIX = "ct"
#: How long register/login wait out the per-address auth budget (30/min by default): a
#: full suite run makes more auth requests than one minute's budget against a URL.
AUTH_PATIENCE = 75.0


def new_username(prefix: str = PREFIX) -> str:
    """``<prefix>_<random>``: valid (3 to 32 of [a-z0-9_.-]) and unique per call."""
    return f"{prefix}_{secrets.token_hex(8)}"


def new_password() -> str:
    return secrets.token_urlsafe(18)


def _post_auth(http: httpx.Client, url: str, body: dict[str, Any], what: str, expect: int) -> dict[str, Any]:
    """POST to an auth endpoint; waits out a 429 (``Retry-After``) for up to ``AUTH_PATIENCE`` s."""
    deadline = time.monotonic() + AUTH_PATIENCE
    while True:
        response = http.post(url, json=body)
        if response.status_code == 429:
            wait = retry_after(response)
            if time.monotonic() + wait <= deadline:
                time.sleep(wait)
                continue
        if response.status_code != expect:
            raise AssertionError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
        answer: dict[str, Any] = response.json()
        return answer


def retry_after(response: httpx.Response) -> float:
    """Seconds a 429 asks to wait (``Retry-After``), at least half a second."""
    try:
        return max(0.5, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def register(
    base_url: str, username: str, password: str, client: httpx.Client | None = None
) -> dict[str, Any]:
    """``POST /api/auth/register``; raises on anything but 201 (a 429 is waited out)."""
    http = client or httpx.Client(timeout=30)
    try:
        body = {"username": username, "password": password}
        return _post_auth(http, f"{base_url}/api/auth/register", body, f"register {username}", 201)
    finally:
        if client is None:
            http.close()


def login(base_url: str, username: str, password: str, client: httpx.Client | None = None) -> dict[str, Any]:
    """``POST /api/auth/login``; raises on anything but 200 (a 429 is waited out). Returns the pair."""
    http = client or httpx.Client(timeout=30)
    try:
        body = {"username": username, "password": password}
        return _post_auth(http, f"{base_url}/api/auth/login", body, f"login {username}", 200)
    finally:
        if client is None:
            http.close()


@dataclass
class Account:
    """A registered, logged-in user."""

    base_url: str
    username: str
    password: str
    user_id: int
    access_token: str
    refresh_token: str

    @classmethod
    def create(cls, base_url: str, prefix: str = PREFIX) -> Account:
        base_url = base_url.rstrip("/")
        username, password = new_username(prefix), new_password()
        with httpx.Client(timeout=30) as client:
            user = register(base_url, username, password, client)["user"]
            tokens = login(base_url, username, password, client)
        return cls(
            base_url, username, password, int(user["id"]), tokens["access_token"], tokens["refresh_token"]
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    def relogin(self) -> dict[str, Any]:
        tokens = login(self.base_url, self.username, self.password)
        self.access_token, self.refresh_token = tokens["access_token"], tokens["refresh_token"]
        return tokens

    def delete(self) -> int:
        """``DELETE /api/me``; returns the status."""
        with httpx.Client(timeout=30) as client:
            return client.delete(f"{self.base_url}/api/me", headers=self.headers).status_code
