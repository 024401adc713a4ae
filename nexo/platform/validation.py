"""Request bodies and query strings parsed into pydantic models, or a clear 400/422.

Bodies are strict: unknown fields are refused, types are not coerced
(``"5"`` is not a number), and the error names the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from sanic import Request
from sanic_ext import openapi

from nexo.platform.errors import BadRequest, ErrorCode, ValidationFailed
from nexo.platform.text import has_lone_surrogate, may_hold_escapes

M = TypeVar("M", bound=BaseModel)
H = TypeVar("H", bound=Callable[..., Any])

#: Largest value of every integer parameter: the databases' BIGINT (seq, indexes, sizes).
INT64_MAX = 2**63 - 1


class Body(BaseModel):
    """Base of every request body: strict types, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Query(BaseModel):
    """Base of every query-string model: values arrive as text and are converted."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or 400 ``invalid_json``."""
    if not request.body:
        raise BadRequest("the request needs a JSON object body", code=ErrorCode.INVALID_JSON)
    try:
        data = request.json
    except Exception:
        raise BadRequest("the request body is not valid JSON", code=ErrorCode.INVALID_JSON) from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", code=ErrorCode.INVALID_JSON)
    if may_hold_escapes(request.body) and has_lone_surrogate(data):
        # RFC 7493 (I-JSON) §2.1; such a string cannot be stored, hashed or echoed as UTF-8.
        raise BadRequest(
            "the request body holds a lone surrogate escape: strings must be valid Unicode",
            code=ErrorCode.INVALID_JSON,
        )
    return data


def describe(error: ValidationError) -> tuple[str, list[dict[str, str]]]:
    problems = [
        {"field": ".".join(str(p) for p in item["loc"]) or "(body)", "problem": item["msg"]}
        for item in error.errors(include_url=False, include_context=False, include_input=False)
    ]
    first = problems[0]
    return f"{first['field']}: {first['problem']}", problems


def parse_body(request: Request, model: type[M]) -> M:
    """Validate the JSON body against ``model``; 400 for bad JSON, 422 for bad fields."""
    data = json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, problems = describe(exc)
        raise ValidationFailed(message, details={"fields": problems}) from None


def parse_query(request: Request, model: type[M]) -> M:
    """Validate query arguments (first value of each) against ``model``; 400 if wrong."""
    data = {key: values[0] for key, values in request.args.items()}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, problems = describe(exc)
        raise BadRequest(message, code="invalid_parameter", details={"fields": problems}) from None


def _openapi_schema(field: dict[str, Any]) -> Any:
    """The OpenAPI schema of one pydantic JSON-schema property (integers are int64)."""
    wanted = ("minimum", "maximum", "default", "minLength", "maxLength", "pattern")
    keep = {key: field[key] for key in wanted if key in field}
    if field.get("type") == "integer":
        return openapi.Long(**keep)
    return openapi.String(**keep)


def query_parameters(model: type[BaseModel]) -> Callable[[H], H]:
    """Declare every field of a :class:`Query` model as an OpenAPI query parameter, with its
    type and bounds: the model that validates the query is the one place they are written."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))

    def decorate(handler: H) -> H:
        for name, field in schema["properties"].items():
            declare = openapi.parameter(name, _openapi_schema(field), "query", required=name in required)
            handler = declare(handler)
        return handler

    return decorate


def path_parameter(name: str, schema: Any, description: str) -> Callable[[H], H]:
    """Declare a path parameter with its real type and bounds (the route itself takes ``str``
    so that a malformed value gets Nexo's JSON error, not Sanic's 404)."""
    return openapi.parameter(name, schema, "path", required=True, description=description)
