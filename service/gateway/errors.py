"""Engine errors → the service's error tree (and so the OpenAI envelope with the right status)."""

from __future__ import annotations

from typing import ClassVar

from service.core.errors import BadRequest, Conflict, NotFound, RateLimited, ServiceError, Unavailable


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
    # Engine messages start with "<param>: ..." when they are about one parameter.
    head, sep, _ = message.partition(":")
    if sep and head.isidentifier():
        return head
    return default


def map_engine_error(exc: Exception, *, model: str, prompt_param: str) -> ServiceError:
    """The ServiceError to answer for ``exc`` raised by the engine (imported lazily: it pulls in torch)."""
    from gpu_runtime.engine import errors as E

    message = str(exc)
    if isinstance(exc, E.QueueFull):
        return RateLimited(
            "The model is at capacity; retry after the time in Retry-After",
            retry_after=exc.retry_after,
            code="rate_limit_exceeded",
        )
    if isinstance(exc, E.UnknownModel):
        return ModelNotFound(model)
    if isinstance(exc, E.ContextLengthExceeded):
        return BadRequest(message, param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, E.InvalidRequest):
        param = _param_of(message, None)
        if param == "prompt":
            param = prompt_param
        return BadRequest(message, param=param, code="invalid_value")
    if isinstance(exc, E.EngineNotRunning):
        return Unavailable("The model is not loaded yet or is shutting down", code="engine_unavailable")
    if isinstance(exc, E.AdapterCapacityError):
        return Unavailable(
            "Every adapter slot is busy; retry shortly", retry_after=1.0, code="adapter_capacity"
        )
    if isinstance(exc, E.AdapterHashMismatch | E.AdapterConflict):
        return Conflict(message, code="adapter_integrity")
    if isinstance(exc, E.AdapterNotFound | E.AdapterFormatError):
        return Conflict(
            f"The adapter of model '{model}' cannot be loaded: {message}", code="adapter_unavailable"
        )
    return EngineFailure("The model failed to answer this request", code="engine_error")
