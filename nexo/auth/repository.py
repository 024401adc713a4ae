"""Every query of accounts and sessions, named by intent."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q, Subquery
from tortoise.functions import Count, Min
from tortoise.transactions import in_transaction

from nexo.auth.models import LoginFailure, RefreshToken, Session, User
from nexo.platform import counters, db


class UsernameTaken(Exception):
    """The unique constraint on ``users.username`` refused the insert."""


async def create_user(username: str, password_hash: str) -> User:
    """Insert the user and bump the ``users`` counter in one transaction."""
    try:
        async with in_transaction() as conn:
            user = await User.create(username=username, password_hash=password_hash, using_db=conn)
            await counters.add("users", 1, using=conn)
    except IntegrityError:
        raise UsernameTaken(username) from None
    return user


async def get_by_username(username: str) -> User | None:
    return await User.get_or_none(username=username.lower())


async def get_by_id(user_id: int) -> User | None:
    return await User.get_or_none(id=user_id)


async def delete_user(user_id: int) -> bool:
    """Remove the user, their sessions and refresh tokens; decrement ``users``."""
    async with in_transaction() as conn:
        session_ids = await Session.filter(user_id=user_id).using_db(conn).values_list("id", flat=True)
        if session_ids:
            await RefreshToken.filter(session_id__in=list(session_ids)).using_db(conn).delete()
            await Session.filter(user_id=user_id).using_db(conn).delete()
        deleted = await User.filter(id=user_id).using_db(conn).delete()
        if deleted:
            await counters.add("users", -deleted, using=conn)
    return bool(deleted)


# -- sessions and refresh tokens ------------------------------------------------------------


async def create_session(session_id: str, user_id: int, token_hash: str, expires_at: datetime) -> None:
    async with in_transaction() as conn:
        await Session.create(id=session_id, user_id=user_id, using_db=conn)
        await RefreshToken.create(
            token_hash=token_hash, session_id=session_id, expires_at=expires_at, using_db=conn
        )


async def get_refresh_token(token_hash: str) -> RefreshToken | None:
    return await RefreshToken.get_or_none(token_hash=token_hash)


async def rotate_refresh_token(
    old_hash: str, new_hash: str, session_id: str, expires_at: datetime, now: datetime
) -> bool:
    """Spend ``old_hash`` and add its successor, atomically.

    The conditional update is the guard: of two concurrent refreshes with the
    same token, exactly one sees one updated row; the other gets False.
    """
    async with in_transaction() as conn:
        spent = (
            await RefreshToken.filter(token_hash=old_hash, used_at=None).using_db(conn).update(used_at=now)
        )
        if spent != 1:
            return False
        live = await Session.filter(id=session_id, revoked_at=None).using_db(conn).exists()
        if not live:
            return False
        await RefreshToken.create(
            token_hash=new_hash, session_id=session_id, expires_at=expires_at, using_db=conn
        )
    return True


async def revoke_session(session_id: str, reason: str, now: datetime) -> bool:
    revoked = await Session.filter(id=session_id, revoked_at=None).update(
        revoked_at=now, revoked_reason=reason
    )
    return bool(revoked)


async def revoke_user_sessions(user_id: int, reason: str, now: datetime) -> int:
    return await Session.filter(user_id=user_id, revoked_at=None).update(
        revoked_at=now, revoked_reason=reason
    )


async def get_session_user(session_id: str) -> User | None:
    """The user of a live session, or None if the session is revoked or the user is gone."""
    session = await Session.get_or_none(id=session_id, revoked_at=None)
    if session is None:
        return None
    return await User.get_or_none(id=session.user_id)


async def live_session_username(session_id: str, user_id: int) -> str | None:
    """The username if the session is live and belongs to an existing user, else None.

    One indexed query per authenticated request, so it is written by hand and, on
    SQLite, run in place by :class:`nexo.platform.db.QuickReader`.
    """
    reader = db.quick_reader()
    found: Sequence[Any] | None = (
        reader.fetch(_LIVE_SESSION_USERNAME, (session_id, user_id)) if reader else None
    )
    if found is None:
        conn = db.connection()
        _, found = await conn.execute_query(db.sql_for(_LIVE_SESSION_USERNAME, conn), [session_id, user_id])
    return str(found[0][0]) if found else None


_LIVE_SESSION_USERNAME = (
    "SELECT u.username FROM sessions s JOIN users u ON u.id = s.user_id "
    "WHERE s.id = ? AND s.user_id = ? AND s.revoked_at IS NULL"
)


#: Session ids per :func:`live_sessions` query.
LIVE_SESSIONS_CHUNK = 500


async def live_sessions(session_ids: Iterable[str]) -> set[str]:
    """Those of ``session_ids`` that are live and belong to an existing user."""
    ids = list(session_ids)
    live: set[str] = set()
    for start in range(0, len(ids), LIVE_SESSIONS_CHUNK):
        chunk = ids[start : start + LIVE_SESSIONS_CHUNK]
        rows = await db.connection().execute_query_dict(
            db.placeholders(
                "SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id "
                f"WHERE s.revoked_at IS NULL AND s.id IN ({','.join('?' * len(chunk))})"
            ),
            chunk,
        )
        live.update(str(row["id"]) for row in rows)
    return live


# -- failed logins --------------------------------------------------------------------------


#: ``pg_advisory_xact_lock(class, key)`` class of the login-attempt locks ("NXLF"); the
#: two-integer form lives apart from the one-bigint locks of the sequencer and messages.
LOGIN_LOCK_CLASS = 0x4E584C46


@dataclass(frozen=True, slots=True)
class AttemptSlot:
    """The outcome of :func:`reserve_login_attempt`.

    ``reserved``: the id of the failure row written for this attempt (``None`` when the
    pair is locked out); ``failures``: the failures counted in the window before it;
    ``oldest``: the oldest of them (when the lockout ends).
    """

    reserved: int | None
    failures: int
    oldest: datetime | None


async def reserve_login_attempt(
    username: str, address: str, now: datetime, since: datetime, threshold: int
) -> AttemptSlot:
    """Count the pair's failures since ``since`` and, if under ``threshold``, record this
    attempt as a failure, in one serialised step.

    The attempt is recorded *before* the password is checked (a success deletes it), so
    concurrent attempts cannot all read the same count: at most ``threshold`` attempts
    per pair and window are ever evaluated. PostgreSQL: a transaction-scoped advisory
    lock on the pair serialises every worker and instance; SQLite (one worker): the
    connection's transaction lock does.
    """
    async with in_transaction() as conn:
        if conn.capabilities.dialect == "postgres":
            await conn.execute_query(
                f"SELECT pg_advisory_xact_lock({LOGIN_LOCK_CLASS}, hashtext($1))", [f"{username}\n{address}"]
            )
        window = LoginFailure.filter(username=username, address=address, at__gte=since).using_db(conn)
        found = (
            await window.annotate(count=Count("id"), oldest=Min("at"))
            .group_by("username")
            .values("count", "oldest")
        )
        count, oldest = (int(found[0]["count"]), found[0]["oldest"]) if found else (0, None)
        if count >= threshold:
            return AttemptSlot(None, count, oldest)
        row = await LoginFailure.create(username=username, address=address, at=now, using_db=conn)
    return AttemptSlot(row.id, count, oldest)


async def clear_login_failures(
    username: str, address: str, *, using: BaseDBAsyncClient | None = None
) -> None:
    await LoginFailure.filter(username=username, address=address).using_db(using).delete()


# -- pruning (nexo.auth.pruning) ----------------------------------------------------------

#: Rows deleted per statement, so a first prune of a big table never holds the writer long.
PRUNE_BATCH = 1000


async def prune_login_failures(before: datetime) -> int:
    """Delete failures older than ``before`` (out of every lockout window)."""
    pruned = 0
    while ids := await LoginFailure.filter(at__lt=before).limit(PRUNE_BATCH).values_list("id", flat=True):
        pruned += await LoginFailure.filter(id__in=list(ids)).delete()
    return pruned


async def prune_refresh_tokens(now: datetime) -> int:
    """Delete expired refresh tokens: no request can use or replay them any more."""
    pruned = 0
    while (
        hashes := await RefreshToken.filter(expires_at__lt=now)
        .limit(PRUNE_BATCH)
        .values_list("token_hash", flat=True)
    ):
        pruned += await RefreshToken.filter(token_hash__in=list(hashes)).delete()
    return pruned


async def prune_sessions(revoked_before: datetime, created_before: datetime) -> int:
    """Delete sessions revoked before ``revoked_before``, and sessions made before
    ``created_before`` that have no refresh token left (every one expired: the session can
    never be refreshed, and its access tokens expired long ago), with their tokens."""
    pruned = 0
    tokenless = Subquery(RefreshToken.all().values("session_id"))
    dead = Q(revoked_at__lt=revoked_before) | (Q(created_at__lt=created_before) & ~Q(id__in=tokenless))
    while ids := await Session.filter(dead).limit(PRUNE_BATCH).values_list("id", flat=True):
        async with in_transaction() as conn:
            await RefreshToken.filter(session_id__in=list(ids)).using_db(conn).delete()
            pruned += await Session.filter(id__in=list(ids)).using_db(conn).delete()
    return pruned


async def usernames(user_ids: Iterable[int]) -> dict[int, str]:
    """Usernames by id for the given ids, in one query."""
    ids = list(set(user_ids))
    if not ids:
        return {}
    return dict(await User.filter(id__in=ids).values_list("id", "username"))
