"""Public read API of the transparency log, and the sequencer's lifecycle.

``prepare`` (main process, once) loads or creates the signing key, refuses a
missing or mismatched one, and signs STH 0 on first start. Each worker then
runs one :class:`~nexo.transparency.sequencer.Sequencer` (``app.ctx.sequencer``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, text
from sanic_ext import openapi

from nexo.context import NexoApp, app_context
from nexo.platform.config import ConfigError, Settings
from nexo.platform.errors import BadRequest
from nexo.platform.validation import INT64_MAX, Query, parse_query, path_parameter, query_parameters
from nexo.transparency import repository, service, tlog_endpoints
from nexo.transparency import sth as sth_mod
from nexo.transparency.keys import load_signing_key
from nexo.transparency.sequencer import Sequencer, ensure_genesis
from nexo.transparency.service import LogErrorCode, STHModel
from nexo.transparency.witness import WitnessSubmitter

bp = Blueprint("transparency", url_prefix="/api")

NO_CACHE = {"Cache-Control": "no-store"}


class STHList(BaseModel):
    sths: list[STHModel]


class Entry(BaseModel):
    leaf_index: int
    leaf: str
    leaf_hash: str


class EntryList(BaseModel):
    entries: list[Entry]


class InclusionProof(BaseModel):
    leaf_index: int
    tree_size: int
    leaf_hash: str
    audit_path: list[str]


class ConsistencyProof(BaseModel):
    first: int
    second: int
    consistency_path: list[str]


class LogKey(BaseModel):
    origin: str
    algorithm: str
    public_key: str
    key_id: str


class PageQuery(Query):
    start: int = Field(default=0, ge=0, le=INT64_MAX)
    limit: int = Field(default=100, ge=1, le=INT64_MAX)  # over 1000: 400 limit_exceeded (service)


class EntriesQuery(Query):
    start: int = Field(ge=0, le=INT64_MAX)
    end: int = Field(ge=0, le=INT64_MAX)


class InclusionQuery(Query):
    leaf_index: int = Field(ge=0, le=INT64_MAX)
    tree_size: int = Field(ge=1, le=INT64_MAX)


class ConsistencyQuery(Query):
    first: int = Field(ge=0, le=INT64_MAX)
    second: int = Field(ge=0, le=INT64_MAX)


async def prepare(settings: Settings) -> None:
    """Check or create the signing key and sign STH 0 at first start."""
    latest = await repository.latest_sth()
    key = load_signing_key(settings, latest)
    if latest is not None and latest.origin != settings.log_origin:
        raise ConfigError(
            f"NEXO_LOG_ORIGIN is {settings.log_origin!r} but the log was started as {latest.origin!r}: "
            "the origin is part of every signed tree head, so it cannot change"
        )
    await ensure_genesis(settings.log_origin, key)


def setup(app: NexoApp) -> None:
    app.blueprint(bp)
    app.blueprint(tlog_endpoints.bp)

    @app.before_server_start
    async def start_sequencer(app: NexoApp) -> None:
        settings: Settings = app.ctx.settings
        key = load_signing_key(settings, await repository.latest_sth())
        app.ctx.log_public_key = sth_mod.public_key_bytes(key)
        app.ctx.sequencer = Sequencer(key, interval=settings.sth_interval, max_age=settings.sth_max_age)
        app.ctx.sequencer.start()
        app.ctx.witness_submitter = None
        if settings.witnesses:
            app.ctx.witness_submitter = WitnessSubmitter(
                settings.witnesses, settings.witness_interval, app.ctx.log_public_key
            )
            app.ctx.witness_submitter.start()

    @app.before_server_stop
    async def stop_sequencer(app: NexoApp) -> None:
        submitter = getattr(app.ctx, "witness_submitter", None)
        if submitter is not None:
            await submitter.stop()
        sequencer = getattr(app.ctx, "sequencer", None)
        if sequencer is not None:
            await sequencer.stop()


def _json(body: Any) -> HTTPResponse:
    return json(body, headers=NO_CACHE)


@bp.get("/sth/latest")
@openapi.summary("The latest signed tree head")
@openapi.response(200, {"application/json": STHModel})
async def sth_latest(request: Request) -> HTTPResponse:
    return _json((await service.latest()).to_json())


@bp.get("/sth/<index:str>")
@openapi.summary("One signed tree head by index")
@path_parameter("index", openapi.Long(minimum=0, maximum=INT64_MAX), "STH index, 0 is the empty tree")
@openapi.response(200, {"application/json": STHModel})
async def sth_by_index(request: Request, index: str) -> HTTPResponse:
    if not (index.isascii() and index.isdecimal() and len(index) <= 19 and int(index) <= INT64_MAX):
        raise BadRequest(f"STH index {index!r} is not a whole number", code=LogErrorCode.INVALID_PARAMETER)
    return _json((await service.sth_json([await service.sth_at(int(index))]))[0])


@bp.get("/sth")
@openapi.summary("Signed tree heads in index order, at most 1000")
@query_parameters(PageQuery)
@openapi.response(200, {"application/json": STHList})
async def sth_list(request: Request) -> HTTPResponse:
    query = parse_query(request, PageQuery)
    return _json({"sths": await service.sth_json(await service.sth_page(query.start, query.limit))})


@bp.get("/log/entries")
@openapi.summary("Leaves start..end (end inclusive, as RFC 6962 get-entries), at most 1000")
@query_parameters(EntriesQuery)
@openapi.response(200, {"application/json": EntryList})
async def log_entries(request: Request) -> HTTPResponse:
    query = parse_query(request, EntriesQuery)
    return _json({"entries": await service.entries(query.start, query.end)})


@bp.get("/log/proof/inclusion")
@openapi.summary("Inclusion proof of a leaf in the tree of a given size (RFC 9162 §2.1.3)")
@query_parameters(InclusionQuery)
@openapi.response(200, {"application/json": InclusionProof})
async def proof_inclusion(request: Request) -> HTTPResponse:
    query = parse_query(request, InclusionQuery)
    return _json(await service.inclusion(query.leaf_index, query.tree_size))


@bp.get("/log/proof/consistency")
@openapi.summary("Consistency proof between two tree sizes (RFC 9162 §2.1.4)")
@query_parameters(ConsistencyQuery)
@openapi.response(200, {"application/json": ConsistencyProof})
async def proof_consistency(request: Request) -> HTTPResponse:
    query = parse_query(request, ConsistencyQuery)
    return _json(await service.consistency(query.first, query.second))


@bp.get("/log/key")
@openapi.summary("The log's origin and Ed25519 public key")
@openapi.response(200, {"application/json": LogKey})
async def log_key(request: Request) -> HTTPResponse:
    settings: Settings = app_context(request).settings
    return json(service.key_info(settings.log_origin, app_context(request).log_public_key))


class WitnessInfo(BaseModel):
    name: str
    vkey: str
    url: str


class WitnessList(BaseModel):
    quorum: int
    witnesses: list[WitnessInfo]


@bp.get("/log/witnesses")
@openapi.summary("The witnesses that cosign this log's checkpoints, and the quorum (NEXO_WITNESSES)")
@openapi.response(200, {"application/json": WitnessList})
async def log_witnesses(request: Request) -> HTTPResponse:
    settings: Settings = app_context(request).settings
    return json(service.witness_info(settings.witnesses, settings.witness_quorum))


@bp.get("/log/checkpoint")
@openapi.summary("The latest STH as a C2SP signed note")
@openapi.response(200, {"text/plain": str})
async def log_checkpoint(request: Request) -> HTTPResponse:
    settings: Settings = app_context(request).settings
    note, headers = await service.served_checkpoint(
        app_context(request).log_public_key, settings.witnesses, settings.witness_quorum
    )
    return text(note, headers={**NO_CACHE, **headers}, content_type="text/plain; charset=utf-8")
