"""Device keys through the transparency log.

Each registration and revocation is one leaf: the UTF-8 JSON of the event
with sorted keys and no spaces (docs/transparency.md "The leaf")::

    {"action","device_id","key_type","public_key","timestamp_ms","user_id","username"}

The caller is answered once the leaf is in a signed tree head, with that STH
and the inclusion proof.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from nexo.auth import service as accounts
from nexo.devices import repository
from nexo.devices.models import Device
from nexo.devices.repository import NewDevice, Revocation
from nexo.platform.errors import BadRequest, Conflict, ErrorCode, NotFound, Unauthorized
from nexo.platform.timefmt import utc_iso
from nexo.transparency.service import Rejected, Sequenced, Sequencer, b64, canonical_leaf

KEY_BYTES = 32
#: The rows a registration leaf adds, written in the sequencer's transaction.
REGISTER_WRITER = repository.RegisterWriter()
#: The row change a revocation leaf makes, written in the sequencer's transaction.
REVOKE_WRITER = repository.RevokeWriter()


class KeyType(StrEnum):
    ED25519 = "ed25519"
    X25519 = "x25519"


class Action(StrEnum):
    REGISTER = "register"
    REVOKE = "revoke"


class DeviceErrorCode(StrEnum):
    INVALID_PUBLIC_KEY = "invalid_public_key"
    UNSUPPORTED_KEY_TYPE = "unsupported_key_type"
    INVALID_DEVICE_NAME = "invalid_device_name"
    DEVICE_NOT_FOUND = "device_not_found"
    DEVICE_ALREADY_REVOKED = "device_already_revoked"
    USER_NOT_FOUND = "user_not_found"


def check_public_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadRequest(
            "public_key must be standard base64 (with padding)", code=DeviceErrorCode.INVALID_PUBLIC_KEY
        ) from None
    if len(raw) != KEY_BYTES:
        raise BadRequest(
            f"public_key must be {KEY_BYTES} bytes, not {len(raw)}", code=DeviceErrorCode.INVALID_PUBLIC_KEY
        )
    return raw


def check_key_type(text: str) -> KeyType:
    try:
        return KeyType(text)
    except ValueError:
        raise BadRequest(
            f"key_type must be one of {', '.join(k.value for k in KeyType)}",
            code=DeviceErrorCode.UNSUPPORTED_KEY_TYPE,
        ) from None


def check_name(text: str) -> str:
    name = text.strip()
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise BadRequest(
            "name must be 1 to 64 printable characters", code=DeviceErrorCode.INVALID_DEVICE_NAME
        )
    return name


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else utc_iso(moment)


def device_json(device: Device) -> dict[str, Any]:
    return {
        "id": str(device.id),
        "name": device.name,
        "key_type": device.key_type,
        "public_key": device.public_key,
        "created_at": iso(device.created_at),
        "revoked_at": iso(device.revoked_at),
        "leaf_index": device.leaf_index,
        "revoke_leaf_index": device.revoke_leaf_index,
    }


_PUBLIC_FIELDS = ("id", "name", "key_type", "public_key", "created_at", "leaf_index")


def public_device_json(device: Device) -> dict[str, Any]:
    """What anyone may see of an active device: :func:`device_json` without revocation details."""
    full = device_json(device)
    return {name: full[name] for name in _PUBLIC_FIELDS}


@dataclass(frozen=True, slots=True)
class LoggedChange:
    device: dict[str, Any]
    sequenced: Sequenced

    def body(self) -> dict[str, Any]:
        entry = self.sequenced
        return {
            "device": self.device,
            "log": {
                "leaf_index": entry.leaf_index,
                "leaf_hash": b64(entry.leaf_hash),
                "leaf": b64(entry.leaf),
            },
            "sth": entry.sth_json,
            "inclusion_proof": [b64(h) for h in entry.inclusion_proof],
        }


async def register(
    sequencer: Sequencer, user_id: int, username: str, name: str, public_key: str, key_type: str
) -> LoggedChange:
    raw = check_public_key(public_key)
    kind = check_key_type(key_type)
    name = check_name(name)
    now_ms = int(time.time() * 1000)
    new = NewDevice(
        id=uuid.uuid4(),
        user_id=user_id,
        name=name,
        key_type=kind.value,
        public_key=b64(raw),
        created_at=datetime.fromtimestamp(now_ms / 1000, UTC),
    )
    leaf = canonical_leaf(
        {
            "action": Action.REGISTER.value,
            "device_id": str(new.id),
            "user_id": user_id,
            "username": username,
            "key_type": new.key_type,
            "public_key": new.public_key,
            "timestamp_ms": now_ms,
        }
    )
    try:
        sequenced = await sequencer.submit(REGISTER_WRITER, new, leaf)
    except Rejected:
        # The account was deleted while the registration waited (RegisterWriter.claim).
        raise Unauthorized("the account has been deleted", code=ErrorCode.INVALID_TOKEN) from None
    device = {
        "id": str(new.id),
        "name": new.name,
        "key_type": new.key_type,
        "public_key": new.public_key,
        "created_at": iso(new.created_at),
        "revoked_at": None,
        "leaf_index": sequenced.leaf_index,
        "revoke_leaf_index": None,
    }
    return LoggedChange(device, sequenced)


def parse_device_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise NotFound(f"no device {text!r}", code=DeviceErrorCode.DEVICE_NOT_FOUND) from None


async def revoke(sequencer: Sequencer, user_id: int, username: str, device_id: uuid.UUID) -> LoggedChange:
    """Append a ``revoke`` leaf. Someone else's device is 404, as if it did not exist."""
    device = await repository.get_owned(device_id, user_id)
    if device is None:
        raise NotFound(f"no device {device_id}", code=DeviceErrorCode.DEVICE_NOT_FOUND)
    if device.revoked_at is not None:
        raise Conflict(f"device {device_id} is already revoked", code=DeviceErrorCode.DEVICE_ALREADY_REVOKED)
    now_ms = int(time.time() * 1000)
    leaf = canonical_leaf(
        {
            "action": Action.REVOKE.value,
            "device_id": str(device.id),
            "user_id": user_id,
            "username": username,
            "key_type": device.key_type,
            "public_key": device.public_key,
            "timestamp_ms": now_ms,
        }
    )
    revocation = Revocation(device.id, user_id, datetime.fromtimestamp(now_ms / 1000, UTC))
    try:
        sequenced = await sequencer.submit(REVOKE_WRITER, revocation, leaf)
    except Rejected:
        raise Conflict(
            f"device {device_id} is already revoked", code=DeviceErrorCode.DEVICE_ALREADY_REVOKED
        ) from None
    refreshed = await repository.get(device.id)
    return LoggedChange(device_json(refreshed or device), sequenced)


async def revoke_all(sequencer: Sequencer, user_id: int, username: str) -> int:
    """Revoke every active device of a user (account deletion); they share one STH.

    ``create_app`` runs it before the user row goes and again once it is gone: a
    registration claimed just before the deletion is committed by then
    (``RegisterWriter.claim``) and revoked.
    """
    devices = await repository.active_for_user(user_id)

    async def one(device: Device) -> bool:
        try:
            await revoke(sequencer, user_id, username, device.id)
        except (Conflict, NotFound):
            return False
        return True

    results = await asyncio.gather(*(one(device) for device in devices))
    return sum(results)


async def latest_registered(limit: int) -> list[Device]:
    """The ``limit`` most recently logged devices, newest first (the operator console)."""
    return await repository.latest_registered(limit)


async def changed_since(since: datetime, user_id: int | None = None) -> list[Device]:
    """Devices registered or revoked at or after ``since`` (``nexo devices review``)."""
    return await repository.changed_since(since, user_id)


async def list_mine(user_id: int) -> list[dict[str, Any]]:
    return [device_json(device) for device in await repository.list_for_user(user_id)]


async def list_for_username(username: str) -> list[dict[str, Any]]:
    user = await accounts.find_user(username)
    if user is None:
        raise NotFound(f"no user {username!r}", code=DeviceErrorCode.USER_NOT_FOUND)
    return [public_device_json(device) for device in await repository.active_for_user(user.id)]
