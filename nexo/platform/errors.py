"""One error tree and the one handler that renders it (docs/api.md "Errors").

Code raises :class:`NexoError` subclasses; :func:`render` turns those, Sanic's
own exceptions and anything unexpected into
``{"error": {"code": "snake_case", "message": "..."}}`` with a fitting status.
Never HTML, never a traceback.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from sanic import Request
from sanic import exceptions as sanic_exc
from sanic.response import HTTPResponse, json

log = logging.getLogger("nexo.errors")


class ErrorCode(StrEnum):
    """Stable machine codes. Clients branch on these, so never rename one."""

    BAD_REQUEST = "bad_request"
    INVALID_JSON = "invalid_json"
    VALIDATION_ERROR = "validation_error"
    UNAUTHORIZED = "unauthorized"
    INVALID_TOKEN = "invalid_token"
    INVALID_CREDENTIALS = "invalid_credentials"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    USERNAME_TAKEN = "username_taken"
    MESSAGE_ID_CONFLICT = "message_id_conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_FAILED_LOGINS = "too_many_failed_logins"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"


class NexoError(Exception):
    """Base of every error Nexo reports to a client."""

    status: int = 500
    code: str = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(NexoError):
    status = 400
    code = ErrorCode.BAD_REQUEST


class ValidationFailed(NexoError):
    status = 422
    code = ErrorCode.VALIDATION_ERROR


class Unauthorized(NexoError):
    """401 with ``WWW-Authenticate: Bearer`` as RFC 6750 asks."""

    status = 401
    code = ErrorCode.UNAUTHORIZED

    def __init__(self, message: str, *, code: str | None = None, bearer_error: str | None = None) -> None:
        challenge = "Bearer" if bearer_error is None else f'Bearer error="{bearer_error}"'
        super().__init__(message, code=code, headers={"WWW-Authenticate": challenge})


class Forbidden(NexoError):
    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(NexoError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(NexoError):
    status = 409
    code = ErrorCode.CONFLICT


class PayloadTooLarge(NexoError):
    status = 413
    code = ErrorCode.PAYLOAD_TOO_LARGE


class TooManyRequests(NexoError):
    """429 with ``Retry-After`` in whole seconds (at least 1)."""

    status = 429
    code = ErrorCode.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))
        merged = {**(headers or {}), "Retry-After": str(self.retry_after)}
        super().__init__(message, code=code, headers=merged, details={"retry_after": self.retry_after})


class ServiceUnavailable(NexoError):
    status = 503
    code = ErrorCode.SERVICE_UNAVAILABLE


_SANIC_CODES: list[tuple[type[Exception], int, str]] = [
    (sanic_exc.NotFound, 404, ErrorCode.NOT_FOUND),
    (sanic_exc.MethodNotAllowed, 405, ErrorCode.METHOD_NOT_ALLOWED),
    (sanic_exc.PayloadTooLarge, 413, ErrorCode.PAYLOAD_TOO_LARGE),
    (sanic_exc.RequestTimeout, 408, "request_timeout"),
    (sanic_exc.HeaderNotFound, 400, ErrorCode.BAD_REQUEST),
    (sanic_exc.BadRequest, 400, ErrorCode.BAD_REQUEST),
    (sanic_exc.Unauthorized, 401, ErrorCode.UNAUTHORIZED),
    (sanic_exc.Forbidden, 403, ErrorCode.FORBIDDEN),
    (sanic_exc.ServiceUnavailable, 503, ErrorCode.SERVICE_UNAVAILABLE),
]


def error_response(error: NexoError) -> HTTPResponse:
    return json(error.body(), status=error.status, headers=error.headers)


def render(request: Request, exception: Exception) -> HTTPResponse:
    """The one error handler: every failure becomes the JSON error shape."""
    if isinstance(exception, NexoError):
        return error_response(exception)
    for kind, status, code in _SANIC_CODES:
        if isinstance(exception, kind):
            message = str(exception) or code.replace("_", " ")
            if status == 404:
                message = f"no route for {request.method} {request.path}"
            if status == 405:
                message = f"method {request.method} is not allowed on {request.path}"
            error = NexoError(message, code=code)
            error.status = status
            if status == 405:
                allowed = getattr(exception, "headers", {}) or {}
                error.headers.update({k: v for k, v in allowed.items() if k.lower() == "allow"})
            return error_response(error)
    if isinstance(exception, sanic_exc.SanicException) and 400 <= exception.status_code < 500:
        error = NexoError(str(exception) or "bad request", code=ErrorCode.BAD_REQUEST)
        error.status = exception.status_code
        return error_response(error)
    request_id = getattr(request, "request_id", "-")
    log.error("unhandled error (request %s)", request_id, exc_info=exception)
    return error_response(NexoError(f"internal error; request id {request_id}"))
