"""HTTP endpoints of the devices feature (docs/transparency.md "Devices API").

Thin: validate, call, serialize.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext import openapi

from nexo.auth.service import authenticated
from nexo.context import NexoApp, app_context
from nexo.devices import service
from nexo.platform.validation import Body, parse_body, path_parameter
from nexo.transparency.service import STHModel

bp = Blueprint("devices", url_prefix="/api")


class DeviceBody(Body):
    name: str
    public_key: str
    key_type: str


class DeviceOut(BaseModel):
    id: str
    name: str
    key_type: str
    public_key: str
    created_at: str
    revoked_at: str | None
    leaf_index: int
    revoke_leaf_index: int | None


class LogPosition(BaseModel):
    leaf_index: int
    leaf_hash: str
    leaf: str


class LoggedDevice(BaseModel):
    device: DeviceOut
    log: LogPosition
    sth: STHModel
    inclusion_proof: list[str]


class DeviceList(BaseModel):
    devices: list[DeviceOut]


class PublicDevice(BaseModel):
    id: str
    name: str
    key_type: str
    public_key: str
    created_at: str
    leaf_index: int


class PublicDeviceList(BaseModel):
    devices: list[PublicDevice]


def setup(app: NexoApp) -> None:
    app.blueprint(bp)


def _logged(body: dict[str, Any], status: int) -> HTTPResponse:
    return json(body, status=status, headers={"Cache-Control": "no-store"})


@bp.post("/devices")
@openapi.summary("Register a device key; answered once its leaf is in a signed tree head")
@openapi.secured("bearer")
@openapi.body({"application/json": DeviceBody})
@openapi.response(201, {"application/json": LoggedDevice})
@authenticated
async def register_device(request: Request) -> HTTPResponse:
    body = parse_body(request, DeviceBody)
    principal = request.ctx.principal
    change = await service.register(
        app_context(request).sequencer,
        principal.user_id,
        principal.username,
        body.name,
        body.public_key,
        body.key_type,
    )
    return _logged(change.body(), 201)


@bp.get("/devices")
@openapi.summary("The caller's devices, revoked ones included")
@openapi.secured("bearer")
@openapi.response(200, {"application/json": DeviceList})
@authenticated
async def my_devices(request: Request) -> HTTPResponse:
    return json({"devices": await service.list_mine(request.ctx.principal.user_id)})


@bp.delete("/devices/<device_id:str>")
@openapi.summary("Revoke one of the caller's devices (appends a revoke leaf)")
@path_parameter("device_id", openapi.String(format="uuid"), "the device's id")
@openapi.secured("bearer")
@openapi.response(200, {"application/json": LoggedDevice})
@authenticated
async def revoke_device(request: Request, device_id: str) -> HTTPResponse:
    principal = request.ctx.principal
    change = await service.revoke(
        app_context(request).sequencer,
        principal.user_id,
        principal.username,
        service.parse_device_id(device_id),
    )
    return _logged(change.body(), 200)


@bp.get("/users/<username:str>/devices")
@openapi.summary("A user's active device keys with their leaf indexes")
@path_parameter("username", openapi.String(minLength=3, maxLength=32), "case-insensitive username")
@openapi.secured("bearer")
@openapi.response(200, {"application/json": PublicDeviceList})
@authenticated
async def user_devices(request: Request, username: str) -> HTTPResponse:
    return json({"devices": await service.list_for_username(username)})
