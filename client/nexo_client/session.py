"""HTTP calls to Nexo with a session that refreshes itself before the access token expires.

Tokens live in the store (``session``: access, refresh, expires_at). A refresh
is attempted once per need, under a lock; a refused refresh (reused, revoked or
expired refresh token) clears the session and raises :class:`SessionRevoked` —
never a retry loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from .errors import AuthError, NotLoggedIn, ServerError, ServerUnavailable, SessionRevoked
from .store import Store

#: Refresh when less than this share of the token's lifetime (at most 60 s), plus one second
#: for the server's whole-second ``exp``, is left.
REFRESH_SHARE = 0.3


def _error(response: httpx.Response) -> ServerError:
    try:
        err = response.json()["error"]
        return ServerError(response.status_code, str(err["code"]), str(err["message"]))
    except (ValueError, KeyError, TypeError):
        return ServerError(response.status_code, "http_error", response.text[:200] or response.reason_phrase)


class Session:
    def __init__(self, server: str, store: Store, *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.store = store
        self.http = httpx.AsyncClient(base_url=self.server, timeout=timeout)
        self._lock = asyncio.Lock()
        self.refreshes = 0

    async def close(self) -> None:
        await self.http.aclose()

    async def call(
        self, method: str, path: str, *, auth: bool = True, json: Any = None, params: Any = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> httpx.Response:
        """One request; with ``auth`` a fresh token, and one refresh-and-retry on 401."""
        for attempt in (1, 2):
            headers = {}
            if auth:
                headers["Authorization"] = f"Bearer {await self.access_token(force=attempt == 2)}"
            try:
                response = await self.http.request(method, path, json=json, params=params, headers=headers)
            except httpx.TransportError as exc:
                raise ServerUnavailable(f"cannot reach {self.server}: {exc!r}") from exc
            if response.status_code == 401 and auth and attempt == 1:
                continue
            if response.status_code == 401 and auth:
                raise SessionRevoked("the server refused this session: log in again")
            if response.status_code not in ok:
                raise _error(response)
            return response
        raise AssertionError("unreachable")

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.call(method, path, **kwargs)).json()

    # -- accounts ---------------------------------------------------------------------------

    async def register(self, username: str, password: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.json(
            "POST", "/api/auth/register", auth=False, json={"username": username, "password": password}
        )
        return body

    async def login(self, username: str, password: str) -> None:
        try:
            tokens = await self.json(
                "POST", "/api/auth/login", auth=False, json={"username": username, "password": password}
            )
        except ServerError as exc:
            if exc.status == 401:
                raise AuthError("wrong username or password") from None
            raise
        self._save(tokens)

    async def logout(self) -> None:
        await self.call("POST", "/api/auth/logout", ok=(200, 204))
        self.store.delete("session")

    def _save(self, tokens: dict[str, Any]) -> None:
        ttl = float(tokens.get("expires_in", 3600))
        self.store.put("session", {
            "access": tokens["access_token"],
            "refresh": tokens["refresh_token"],
            "expires_at": time.time() + ttl,
            "ttl": ttl,
        })

    async def access_token(self, *, force: bool = False) -> str:
        """The stored access token, refreshed first if it is about to expire (or ``force``)."""
        session = self.store.get("session")
        if session is None:
            raise NotLoggedIn("not logged in: run `nexo-client login USER` first")
        margin = self.refresh_margin()
        if not force and session["expires_at"] - time.time() > margin:
            return str(session["access"])
        async with self._lock:
            current = self.store.get("session")
            if current is None:
                raise NotLoggedIn("not logged in: run `nexo-client login USER` first")
            if current["access"] != session["access"]:
                return str(current["access"])  # another task refreshed meanwhile
            await self._refresh(str(current["refresh"]))
            return str(self.store.get("session")["access"])

    def seconds_left(self) -> float:
        session = self.store.get("session")
        return 0.0 if session is None else float(session["expires_at"]) - time.time()

    def refresh_margin(self) -> float:
        session = self.store.get("session")
        return 61.0 if session is None else min(60.0, float(session["ttl"]) * REFRESH_SHARE) + 1.0

    async def _refresh(self, refresh_token: str) -> None:
        try:
            response = await self.http.post("/api/auth/refresh", json={"refresh_token": refresh_token})
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach {self.server}: {exc!r}") from exc
        if response.status_code in (400, 401, 403):
            self.store.delete("session")
            reason = _error(response)
            raise SessionRevoked(
                f"the session ended ({reason.code}: the refresh token was reused, revoked or expired); "
                "log in again"
            )
        if response.status_code != 200:
            raise _error(response)
        self._save(response.json())
        self.refreshes += 1
