"""The service's domain error tree and its single mapping to HTTP.

    ServiceError
     ├── BadRequest (400)          the request is malformed
     ├── Unauthorized (401)        no or unknown API key
     ├── Forbidden (403)           the key's role may not do this
     ├── NotFound (404)            absent, or another tenant's object
     ├── Conflict (409)            the object's state forbids this now
     ├── PayloadTooLarge (413)     over a configured size limit
     ├── Unprocessable (422)       well-formed but invalid; names the field
     ├── RateLimited (429)         slow down; carries Retry-After
     └── Unavailable (503)         a dependency is down; carries Retry-After

Every error answers ``{"error": {"message", "type", "param", "code"}}``: the envelope the official
``openai`` client reads, used for all routes so clients need to parse one shape.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

logger = logging.getLogger("obliviate.errors")


class ServiceError(Exception):
    status_code: ClassVar[int] = 400
    error_type: ClassVar[str] = "invalid_request_error"
    default_code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}


class BadRequest(ServiceError):
    pass


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(ServiceError):
    status_code = 403
    error_type = "permission_error"
    default_code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    error_type = "conflict_error"
    default_code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    default_code = "payload_too_large"


class Unprocessable(ServiceError):
    status_code = 422
    default_code = "invalid_value"


class RateLimited(ServiceError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, round(retry_after))))


class Unavailable(ServiceError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 5.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, round(retry_after))))


def error_body(message: str, error_type: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def service_error_handler(_: Request[Any, Any, Any], exc: ServiceError) -> Response[dict[str, Any]]:
    return Response(
        error_body(exc.message, exc.error_type, exc.code, exc.param),
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _validation_message(exc: ValidationException) -> tuple[str, str | None]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts: list[str] = []
    param: str | None = None
    for item in extra[:5]:
        if isinstance(item, dict):
            key = str(item.get("key") or "")
            message = str(item.get("message") or "")
            param = param or key or None
            parts.append(f"{key}: {message}" if key else message)
    detail = "; ".join(parts) if parts else str(exc.detail)
    return f"Invalid request: {detail}", param


def http_exception_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """Litestar's own errors (routing, validation, body limits) in the same envelope."""
    status = exc.status_code
    if isinstance(exc, ValidationException):
        message, param = _validation_message(exc)
        # Litestar answers 400 for a body that fails validation; ours is 422 naming the field.
        return Response(error_body(message, "invalid_request_error", "invalid_value", param), status_code=422)
    error_type = "invalid_request_error"
    code = "bad_request"
    if isinstance(exc, NotFoundException):
        error_type, code = "not_found_error", "not_found"
    elif isinstance(exc, NotAuthorizedException):
        error_type, code = "authentication_error", "invalid_api_key"
    elif isinstance(exc, PermissionDeniedException):
        error_type, code = "permission_error", "forbidden"
    elif status == 405:
        code = "method_not_allowed"
    elif status == 413:
        code = "payload_too_large"
    elif status >= 500:
        error_type, code = "server_error", "internal_error"
    return Response(
        error_body(str(exc.detail), error_type, code), status_code=status, headers=exc.headers or None
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # Log the type and route only: exception messages can carry request data (never log corpora).
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return Response(
        error_body("Internal server error", "server_error", "internal_error"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    ServiceError: service_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
