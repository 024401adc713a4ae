"""Accounts and sessions: register, login, refresh rotation with reuse detection, logout, delete.

Refresh tokens are opaque (256 random bits), stored only as SHA-256, single
use: each refresh spends the token and returns a new pair in the same session.
Presenting a spent token again means it was stolen or replayed, so the whole
session (its refresh family and its access tokens) is revoked.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter

from nexo.auth import repository
from nexo.auth.guard import Principal as Principal
from nexo.auth.guard import authenticated as authenticated
from nexo.auth.guard import bearer_token as bearer_token
from nexo.auth.guard import principal_for_token as principal_for_token
from nexo.auth.models import User
from nexo.auth.passwords import MAX_BYTES, MIN_LENGTH, Passwords
from nexo.auth.tokens import InvalidToken, TokenService
from nexo.platform.config import Settings
from nexo.platform.errors import (
    BadRequest,
    Conflict,
    ErrorCode,
    NotFound,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)

log = logging.getLogger("nexo.auth")

USERNAME_RE = re.compile(r"^[a-z0-9_.-]{3,32}$")

#: What another feature does when an account is deleted: ``async hook(user_id, username)``.
AccountHook = Callable[[int, str], Awaitable[object]]

FAILED_LOGINS = Counter("nexo_failed_logins_total", "Failed login attempts", ["reason"])
LOCKED_OUT = Counter("nexo_login_lockouts_total", "Logins refused because of too many failures")
REFRESH_REUSE = Counter("nexo_refresh_token_reuse_total", "Spent refresh tokens presented again")


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int

    def body(self) -> dict[str, object]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }


def now_utc() -> datetime:
    return datetime.now(UTC)


def hash_refresh(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_username(raw: str) -> str:
    username = raw.strip().lower()
    if not USERNAME_RE.fullmatch(username):
        raise ValidationFailed(
            "username must be 3 to 32 characters of a-z, 0-9, '_', '.' or '-'",
            details={"fields": [{"field": "username", "problem": "invalid username"}]},
        )
    return username


def check_password(password: str) -> None:
    if len(password.encode()) > MAX_BYTES:
        raise BadRequest(f"password is longer than {MAX_BYTES} bytes", code="password_too_long")
    if len(password) < MIN_LENGTH:
        raise ValidationFailed(
            f"password must be at least {MIN_LENGTH} characters",
            details={"fields": [{"field": "password", "problem": "too short"}]},
        )


async def find_user(username: str) -> User | None:
    """The account named ``username`` (any case), or None."""
    name = username.lower()
    # A name no account can have is unknown without a query (it may not fit the column).
    return await repository.get_by_username(name) if USERNAME_RE.fullmatch(name) else None


async def usernames(user_ids: Iterable[int]) -> dict[int, str]:
    """Usernames by id for the given ids, in one query."""
    return await repository.usernames(user_ids)


async def live_sessions(session_ids: set[str]) -> set[str]:
    """Those of ``session_ids`` that are live and belong to an existing user."""
    return await repository.live_sessions(session_ids)


class AuthService:
    def __init__(self, settings: Settings, tokens: TokenService, passwords: Passwords) -> None:
        self.settings = settings
        self.tokens = tokens
        self.passwords = passwords
        #: Called, at once, with ``(user_id, session_id)`` after a session ends (logout,
        #: refresh-token reuse) or ``(user_id, None)`` after all of a user's end (logout
        #: everywhere, account deletion); ``user_id`` is None when unknown. The realtime hub
        #: closes this process's connections of it (other processes poll, nexo/realtime/sessions.py).
        self.session_listeners: list[Callable[[int | None, str | None], object]] = []
        #: Run by ``DELETE /api/me`` before the user row goes (wired in ``create_app``).
        self.deleting_hooks: list[AccountHook] = []
        #: Run by ``DELETE /api/me`` once the deletion is committed (wired in ``create_app``).
        #: From then on nothing new can be attached to the user (device registrations are
        #: refused, ids are never reused), so these hooks see everything that ever will be.
        self.deleted_hooks: list[AccountHook] = []

    async def register(self, username: str, password: str) -> User:
        name = normalize_username(username)
        check_password(password)
        password_hash = await self.passwords.hash(password)
        try:
            user = await repository.create_user(name, password_hash)
        except repository.UsernameTaken:
            raise Conflict(f"the username {name!r} is taken", code=ErrorCode.USERNAME_TAKEN) from None
        log.info("registered user %s (id %s)", name, user.id)
        return user

    async def get_user(self, user_id: int) -> User:
        user = await repository.get_by_id(user_id)
        if user is None:
            raise NotFound("no such user")
        return user

    async def login(self, username: str, password: str, address: str) -> TokenPair:
        name = username.strip().lower()[:64]
        if not USERNAME_RE.fullmatch(name):
            # No account can have this name, so there is nothing to guess or lock out; and it
            # may not fit the columns (or, with U+0000, PostgreSQL text) the lockout writes.
            FAILED_LOGINS.labels("unknown_user").inc()
            raise Unauthorized("invalid username or password", code=ErrorCode.INVALID_CREDENTIALS)
        now = now_utc()
        window = timedelta(seconds=self.settings.login_lockout_window)
        slot = await repository.reserve_login_attempt(
            name, address, now, now - window, self.settings.login_lockout_threshold
        )
        if slot.reserved is None:
            LOCKED_OUT.inc()
            retry_after = ((slot.oldest or now) + window - now).total_seconds()
            log.warning(
                "login refused: locked out username=%s address=%s failures=%d", name, address, slot.failures
            )
            raise TooManyRequests(
                "too many failed logins for this username from this address; try again later",
                retry_after=retry_after,
                code=ErrorCode.TOO_MANY_FAILED_LOGINS,
            )
        # This attempt is already recorded as a failure (see reserve_login_attempt).
        user = await repository.get_by_username(name) if len(password.encode()) <= MAX_BYTES else None
        ok = await self.passwords.verify(user.password_hash if user else None, password[:MAX_BYTES])
        if not ok or user is None:
            reason = "unknown_user" if user is None else "wrong_password"
            FAILED_LOGINS.labels(reason).inc()
            log.warning("failed login username=%s address=%s reason=%s", name, address, reason)
            raise Unauthorized("invalid username or password", code=ErrorCode.INVALID_CREDENTIALS)
        await repository.clear_login_failures(name, address)
        return await self._new_session(user)

    async def _new_session(self, user: User) -> TokenPair:
        session_id = secrets.token_hex(16)
        refresh = secrets.token_urlsafe(32)
        expires = now_utc() + timedelta(seconds=self.settings.refresh_token_ttl)
        await repository.create_session(session_id, user.id, hash_refresh(refresh), expires)
        access = self.tokens.issue_access(user.id, user.username, session_id)
        return TokenPair(access, refresh, self.settings.access_token_ttl)

    async def refresh(self, refresh_token: str) -> TokenPair:
        stored = await repository.get_refresh_token(hash_refresh(refresh_token))
        if stored is None:
            raise InvalidToken("unknown refresh token")
        now = now_utc()
        if stored.used_at is not None:
            await self._reuse_detected(stored.session_id, now)
        if stored.expires_at <= now:
            raise InvalidToken("the refresh token has expired")
        new_refresh = secrets.token_urlsafe(32)
        expires = now + timedelta(seconds=self.settings.refresh_token_ttl)
        rotated = await repository.rotate_refresh_token(
            stored.token_hash, hash_refresh(new_refresh), stored.session_id, expires, now
        )
        if not rotated:
            # Spent concurrently, or the session is already revoked.
            await self._reuse_detected(stored.session_id, now)
        session_user = await repository.get_session_user(stored.session_id)
        if session_user is None:
            raise InvalidToken("the session has ended")
        access = self.tokens.issue_access(session_user.id, session_user.username, stored.session_id)
        return TokenPair(access, new_refresh, self.settings.access_token_ttl)

    async def _reuse_detected(self, session_id: str, now: datetime) -> None:
        if await repository.revoke_session(session_id, "refresh_reuse", now):
            REFRESH_REUSE.inc()
            log.warning("refresh token reuse: session %s revoked", session_id)
        self._ended(None, session_id)
        raise InvalidToken("the refresh token was already used; the session has been revoked")

    async def logout(self, session_id: str, user_id: int, everywhere: bool) -> int:
        now = now_utc()
        if everywhere:
            count = await repository.revoke_user_sessions(user_id, "logout", now)
            self._ended(user_id, None)
            return count
        revoked = int(await repository.revoke_session(session_id, "logout", now))
        self._ended(user_id, session_id)
        return revoked

    def _ended(self, user_id: int | None, session_id: str | None) -> None:
        for listener in self.session_listeners:
            try:
                listener(user_id, session_id)
            except Exception:  # the revocation is committed; the poll closes what this missed
                log.exception("a session-ended listener failed")

    async def delete_account(self, user_id: int) -> None:
        user = await repository.get_by_id(user_id)
        if user is None:
            return
        for hook in self.deleting_hooks:
            await hook(user_id, user.username)
        await repository.delete_user(user_id)
        self._ended(user_id, None)
        for hook in self.deleted_hooks:
            await hook(user_id, user.username)
        log.info("deleted user id %s", user_id)
