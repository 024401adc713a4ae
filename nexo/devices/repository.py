"""Every query of the devices feature, and the log writers that add device rows.

Device rows change only inside the sequencer's transaction (see
``nexo.transparency.sequencer``), so a device exists exactly when its
registration leaf does, and is revoked exactly when its revocation leaf is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import Q

from nexo.devices.models import Device
from nexo.platform import db


@dataclass(frozen=True, slots=True)
class NewDevice:
    id: uuid.UUID
    user_id: int
    name: str
    key_type: str
    public_key: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Revocation:
    device_id: uuid.UUID
    user_id: int
    revoked_at: datetime


class RegisterWriter:
    """Inserts the devices of a batch of registration leaves."""

    async def claim(self, conn: BaseDBAsyncClient, payloads: list[NewDevice]) -> list[bool]:
        """Only devices whose owner still exists, so a registration racing ``DELETE /api/me``
        never leaves an active key for a deleted user.

        PostgreSQL: ``FOR SHARE`` holds the owners' rows until the batch commits, so the
        deletion's ``DELETE FROM users`` waits for it, and the revocation that follows the
        deletion (``nexo.devices.service.revoke_all``) sees the new device. SQLite: the
        sequencer's transaction holds the one write lock.
        """
        owners = sorted({new.user_id for new in payloads})
        lock = " FOR SHARE" if conn.capabilities.dialect == "postgres" else ""
        query = f"SELECT id FROM users WHERE id IN ({','.join('?' * len(owners))}){lock}"
        _, rows = await conn.execute_query(db.sql_for(query, conn), owners)
        alive = {int(row[0]) for row in rows}
        return [new.user_id in alive for new in payloads]

    async def write(self, conn: BaseDBAsyncClient, items: list[tuple[NewDevice, int]]) -> None:
        # By hand: building a Device model per row cost more than the insert itself.
        await conn.execute_many(
            db.sql_for(_INSERT_DEVICE, conn),
            [
                [
                    str(new.id),
                    new.user_id,
                    new.name,
                    new.key_type,
                    new.public_key,
                    new.created_at,
                    leaf_index,
                ]
                for new, leaf_index in items
            ],
        )


_INSERT_DEVICE = (
    "INSERT INTO devices (id, user_id, name, key_type, public_key, created_at, leaf_index) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class RevokeWriter:
    """Marks devices revoked; a device already revoked is refused (takes no leaf)."""

    async def claim(self, conn: BaseDBAsyncClient, payloads: list[Revocation]) -> list[bool]:
        verdicts = []
        for revocation in payloads:
            changed = (
                await Device.filter(id=revocation.device_id, user_id=revocation.user_id, revoked_at=None)
                .using_db(conn)
                .update(revoked_at=revocation.revoked_at)
            )
            verdicts.append(changed > 0)
        return verdicts

    async def write(self, conn: BaseDBAsyncClient, items: list[tuple[Revocation, int]]) -> None:
        for revocation, leaf_index in items:
            await Device.filter(id=revocation.device_id).using_db(conn).update(revoke_leaf_index=leaf_index)


async def get(device_id: uuid.UUID) -> Device | None:
    return await Device.get_or_none(id=device_id)


async def get_owned(device_id: uuid.UUID, user_id: int) -> Device | None:
    return await Device.get_or_none(id=device_id, user_id=user_id)


async def list_for_user(user_id: int) -> list[Device]:
    return await Device.filter(user_id=user_id).order_by("leaf_index")


async def active_for_user(user_id: int) -> list[Device]:
    return await Device.filter(user_id=user_id, revoked_at=None).order_by("leaf_index")


async def changed_since(since: datetime, user_id: int | None = None) -> list[Device]:
    """Devices registered or revoked at or after ``since``."""
    query = Device.filter(Q(created_at__gte=since) | Q(revoked_at__gte=since))
    if user_id is not None:
        query = query.filter(user_id=user_id)
    return await query.order_by("leaf_index")


async def latest_registered(limit: int) -> list[Device]:
    """The ``limit`` most recently logged devices (newest first), by their unique leaf index."""
    return await Device.all().order_by("-leaf_index").limit(limit)
