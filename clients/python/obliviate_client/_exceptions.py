"""Errors raised by the SDK. Every error carries the request it concerns.

ObliviateError
 ├── TransportError               no HTTP answer (connection refused, reset, DNS)
 │    └── APITimeoutError         no answer within the timeout
 ├── SignatureError               a certificate's signature does not verify
 └── APIError                     the server answered with an error status
      ├── BadRequestError         400
      ├── AuthenticationError     401
      ├── PermissionDeniedError   403
      ├── NotFoundError           404 (also: another tenant's object)
      ├── ConflictError           409
      ├── PayloadTooLargeError    413
      ├── UnprocessableEntityError 422 (names the field in ``param``)
      ├── RateLimitedError        429 (``retry_after`` seconds)
      └── ServerError             5xx
"""

from __future__ import annotations

from typing import Any

import httpx


class ObliviateError(Exception):
    """Base of every error the SDK raises."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class TransportError(ObliviateError):
    """The request got no HTTP answer."""


class APITimeoutError(TransportError):
    """The request timed out."""


class SignatureError(ObliviateError):
    """A certificate's signature, payload or key did not verify."""


class APIError(ObliviateError):
    """The server answered with an error; ``code`` and ``param`` come from its error envelope."""

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, request=request)
        self.status_code = status_code
        self.code = code
        self.param = param
        self.error_type = error_type
        self.response = response
        self.body = body

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status_code} {self.code or 'error'}: {self.message}{where}"


class BadRequestError(APIError):
    pass


class AuthenticationError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class PayloadTooLargeError(APIError):
    pass


class UnprocessableEntityError(APIError):
    pass


class RateLimitedError(APIError):
    """429: ``retry_after`` is the server's Retry-After in seconds, when given."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.response)


class ServerError(APIError):
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitedError,
}


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> APIError:
    """Build the right APIError subclass from an error response and its envelope."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    message, code, param, error_type = response.reason_phrase or "error", None, None, None
    if isinstance(body, dict):
        envelope = body.get("error")
        if isinstance(envelope, dict):
            message = str(envelope.get("message") or message)
            code = envelope.get("code")
            param = envelope.get("param")
            error_type = envelope.get("type")
        elif "detail" in body:
            message = str(body["detail"])
    elif isinstance(body, str) and body:
        message = body[:500]
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(
        message,
        status_code=status,
        code=code,
        param=param,
        error_type=error_type,
        request=response.request,
        response=response,
        body=body,
    )


class APIVersionWarning(UserWarning):
    """The server speaks another API version than this SDK (warned once per client)."""
