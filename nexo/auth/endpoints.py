"""HTTP endpoints of accounts and sessions (docs/auth.md). Thin: validate, call, serialize."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty, json
from sanic_ext import openapi

from nexo.auth.guard import authenticated
from nexo.auth.models import User
from nexo.auth.passwords import Passwords
from nexo.auth.pruning import prune_forever
from nexo.auth.service import AuthService
from nexo.auth.tokens import TokenService
from nexo.context import NexoApp, app_context
from nexo.platform.ratelimit import client_address
from nexo.platform.tasks import cancel_and_wait
from nexo.platform.timefmt import utc_iso
from nexo.platform.validation import Body, parse_body

bp = Blueprint("auth", url_prefix="/api")


class Credentials(Body):
    username: str
    password: str


class RefreshBody(Body):
    refresh_token: str


class LogoutBody(Body):
    everywhere: bool = False


class UserOut(BaseModel):
    id: int
    username: str
    created_at: str


class UserEnvelope(BaseModel):
    user: UserOut


class TokenPairOut(BaseModel):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str


def user_json(user: User) -> dict[str, object]:
    return {"user": {"id": user.id, "username": user.username, "created_at": utc_iso(user.created_at)}}


def service(request: Request) -> AuthService:
    auth: AuthService = app_context(request).auth
    return auth


def setup(app: NexoApp) -> None:
    app.blueprint(bp)
    settings = app.ctx.settings
    app.ctx.tokens = TokenService(settings)

    @app.before_server_start
    async def start_auth(app: NexoApp) -> None:
        passwords = Passwords(settings.argon2_memory_kib, settings.argon2_time_cost)
        app.ctx.auth = AuthService(settings, app.ctx.tokens, passwords)
        app.ctx.auth_pruner = (
            asyncio.get_running_loop().create_task(prune_forever(settings), name="nexo-auth-prune")
            if settings.prune_interval > 0
            else None
        )

    @app.before_server_stop
    async def stop_auth(app: NexoApp) -> None:
        await cancel_and_wait(app.ctx.auth_pruner)


@bp.post("/auth/register")
@openapi.summary("Create an account")
@openapi.body({"application/json": Credentials})
@openapi.response(201, {"application/json": UserEnvelope}, "created")
@openapi.response(409, description="username taken")
async def register(request: Request) -> HTTPResponse:
    body = parse_body(request, Credentials)
    user = await service(request).register(body.username, body.password)
    return json(user_json(user), status=201)


@bp.post("/auth/login")
@openapi.summary("Log in: a 1-hour access token and a refresh token")
@openapi.body({"application/json": Credentials})
@openapi.response(200, {"application/json": TokenPairOut}, "logged in")
@openapi.response(401, description="invalid username or password")
@openapi.response(429, description="too many failures for this username from this address")
async def login(request: Request) -> HTTPResponse:
    body = parse_body(request, Credentials)
    pair = await service(request).login(body.username, body.password, client_address(request))
    return json(pair.body())


@bp.post("/auth/refresh")
@openapi.summary("Trade a refresh token for a new pair; the old one dies")
@openapi.body({"application/json": RefreshBody})
@openapi.response(200, {"application/json": TokenPairOut}, "new pair")
@openapi.response(401, description="unknown, expired or reused refresh token")
async def refresh(request: Request) -> HTTPResponse:
    body = parse_body(request, RefreshBody)
    pair = await service(request).refresh(body.refresh_token)
    return json(pair.body())


@bp.post("/auth/logout")
@openapi.summary("End this session (or every session with everywhere=true)")
@openapi.secured("bearer")
@openapi.body({"application/json": LogoutBody})
@authenticated
async def logout(request: Request) -> HTTPResponse:
    everywhere = parse_body(request, LogoutBody).everywhere if request.body else False
    principal = request.ctx.principal
    revoked = await service(request).logout(principal.session_id, principal.user_id, everywhere)
    return json({"revoked_sessions": revoked})


@bp.get("/me")
@openapi.summary("The caller")
@openapi.secured("bearer")
@openapi.response(200, {"application/json": UserEnvelope}, "the caller")
@authenticated
async def me(request: Request) -> HTTPResponse:
    user = await service(request).get_user(request.ctx.principal.user_id)
    return json(user_json(user))


@bp.delete("/me")
@openapi.summary("Delete the caller's account: sessions end, devices are revoked through the log")
@openapi.secured("bearer")
@openapi.response(204, description="deleted")
@authenticated
async def delete_me(request: Request) -> HTTPResponse:
    await service(request).delete_account(request.ctx.principal.user_id)
    return empty(status=204)
