"""HTTP endpoints of the messages feature (docs/messaging.md "HTTP"). Thin: validate, call, serialize."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext import openapi

from nexo.auth.service import authenticated
from nexo.context import NexoApp, app_context
from nexo.messages import service
from nexo.messages.service import MessageSender, RecipientCache, Sender
from nexo.messages.writer import MessageWriter
from nexo.platform.errors import NotFound, ValidationFailed
from nexo.platform.validation import (
    INT64_MAX,
    Body,
    Query,
    parse_body,
    parse_query,
    path_parameter,
    query_parameters,
)

bp = Blueprint("messages", url_prefix="/api")

MAX_LIST = 1000


class SendBody(Body):
    message_id: str
    to: str = Field(min_length=1, max_length=64)
    body: str


class ListQuery(Query):
    since: int = Field(default=0, ge=0, le=INT64_MAX)
    limit: int = Field(default=100, ge=1, le=MAX_LIST)


class SendOut(BaseModel):
    message_id: str
    seq: int
    server_ts: int
    duplicate: bool


class MessageOut(BaseModel):
    message_id: str
    sender: str | None = Field(alias="from")
    to: str | None
    body: str
    seq: int
    server_ts: int
    delivered_at: int | None


class MessageList(BaseModel):
    messages: list[MessageOut]


def setup(app: NexoApp) -> None:
    app.blueprint(bp)

    @app.before_server_start
    async def start_writer(app: NexoApp) -> None:
        writer = MessageWriter()
        writer.start()
        recipients = RecipientCache()
        app.ctx.message_writer = writer
        app.ctx.recipients = recipients
        app.ctx.message_sender = MessageSender(writer, recipients, app.ctx.settings.message_body_max_bytes)

    @app.after_server_stop
    async def stop_writer(app: NexoApp) -> None:
        await app.ctx.message_writer.close()


def _full(message: Any) -> dict[str, Any]:
    return {**service.message_json(message), "delivered_at": message.delivered_at}


def _message_id(value: str) -> str:
    canonical = service.canonical_message_id(value)
    if canonical is None:
        raise ValidationFailed(f"message_id: {service.MESSAGE_ID_FORMAT}", code="invalid_message_id")
    return canonical


@bp.post("/messages")
@openapi.summary("Send a message (stored once per message_id)")
@openapi.body({"application/json": SendBody})
@openapi.response(201, {"application/json": SendOut}, "stored")
@openapi.response(200, {"application/json": SendOut}, "duplicate of a stored message: the original seq")
@openapi.secured("bearer")
@authenticated
async def send_message(request: Request) -> HTTPResponse:
    data = parse_body(request, SendBody)
    principal = request.ctx.principal
    sender = Sender(principal.user_id, principal.username, principal.session_id)
    message_id = _message_id(data.message_id)
    result = await app_context(request).message_sender.send(sender, message_id, data.to, data.body)
    body = {
        "message_id": result.message_id,
        "seq": result.seq,
        "server_ts": result.server_ts,
        "duplicate": result.duplicate,
    }
    return json(body, status=200 if result.duplicate else 201)


@bp.get("/messages")
@openapi.summary("The caller's messages (sent and received) with seq > since, ascending")
@query_parameters(ListQuery)
@openapi.response(200, {"application/json": MessageList}, "messages")
@openapi.secured("bearer")
@authenticated
async def list_messages(request: Request) -> HTTPResponse:
    query = parse_query(request, ListQuery)
    rows = await service.history(request.ctx.principal.user_id, query.since, query.limit)
    return json({"messages": [_full(row) for row in rows]})


@bp.get("/messages/<message_id:str>")
@openapi.summary("One message, for its sender or recipient only (404 for anyone else)")
@path_parameter("message_id", openapi.String(format="uuid"), "the message's UUID")
@openapi.response(200, {"application/json": MessageOut}, "the message")
@openapi.secured("bearer")
@authenticated
async def get_message(request: Request, message_id: str) -> HTTPResponse:
    canonical = service.canonical_message_id(message_id)
    if canonical is None:
        raise NotFound("no such message")
    row = await service.get_visible(canonical, request.ctx.principal.user_id)
    return json(_full(row))
