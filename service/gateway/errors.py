"""Serving backend errors → the service's error tree (and so the OpenAI envelope with the right status)."""

from __future__ import annotations

from typing import ClassVar

from service.core.errors import BadRequest, Conflict, NotFound, RateLimited, ServiceError, Unavailable
from service.serving import errors as B


class ModelNotFound(NotFound):
    # The OpenAI API answers unknown models with 404 / invalid_request_error / model_not_found.
    error_type: ClassVar[str] = "invalid_request_error"
    default_code: ClassVar[str] = "model_not_found"

    def __init__(self, model: str, detail: str = "") -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.{' ' + detail if detail else ''}",
            param="model",
        )


class EngineFailure(ServiceError):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "engine_error"


def _param_of(message: str, default: str | None) -> str | None:
    # Backend messages start with "<param>: ..." when they are about one parameter.
    head, sep, _ = message.partition(":")
    if sep and head.isidentifier():
        return head
    return default


def map_engine_error(exc: Exception, *, model: str, prompt_param: str) -> ServiceError:
    """The ServiceError to answer for ``exc`` raised by the serving backend (:mod:`service.serving.errors`)."""
    if isinstance(exc, ServiceError):
        return exc
    message = str(exc)
    if isinstance(exc, B.Overloaded):
        return RateLimited(
            "The model is at capacity; retry after the time in Retry-After",
            retry_after=exc.retry_after,
            code="rate_limit_exceeded",
        )
    if isinstance(exc, B.UnknownModel):
        return ModelNotFound(model)
    if isinstance(exc, B.ContextTooLong):
        return BadRequest(message, param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, B.InvalidInput):
        param = exc.param or _param_of(message, None)
        if param == "prompt":
            param = prompt_param
        return BadRequest(message, param=param, code="invalid_value")
    if isinstance(exc, B.AliasUnavailable):
        # Fail closed, as the embedded path: never another version or the base model instead.
        return Unavailable(
            f"The model '{model}' is unavailable: {exc.reason}. It will not answer with another version; "
            "retry later or contact the operator.",
            param="model",
            code="alias_unavailable",
            retry_after=exc.retry_after,
        )
    if isinstance(exc, B.BackendUnavailable):
        return Unavailable("The model is not loaded yet or is shutting down", code="engine_unavailable")
    if isinstance(exc, B.AdapterError):
        if exc.code == "adapter_capacity":
            return Unavailable(
                "Every adapter slot is busy; retry shortly", retry_after=1.0, code="adapter_capacity"
            )
        if exc.code in ("hash_mismatch", "adapter_conflict"):
            return Conflict(message, code="adapter_integrity")
        if exc.code in ("adapter_missing", "adapter_format"):
            return Conflict(
                f"The adapter of model '{model}' cannot be loaded: {message}", code="adapter_unavailable"
            )
        if exc.code == "upstream_unavailable":
            return Unavailable(
                f"No serving upstream can load the adapter of model '{model}' now; retry shortly",
                retry_after=2.0,
                code="upstream_unavailable",
            )
        return EngineFailure(f"The adapter of model '{model}' failed to load", code="adapter_load_failed")
    return EngineFailure("The model failed to answer this request", code="engine_error")
