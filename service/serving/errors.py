"""Errors every serving backend raises, whatever runs the model; the gateway maps each to one HTTP answer.

Backends translate their own failures (engine exceptions, upstream HTTP errors) into this tree, so the
gateway, verification and deployments never import an engine::

    BackendError                 500 engine_error         anything unexpected
    ├── BackendUnavailable       503 engine_unavailable   engine stopped, or no healthy upstream
    ├── Overloaded               429 rate_limit_exceeded  queue full; carries retry_after
    ├── InvalidInput             400 invalid_value        a parameter is out of range (``param`` names it)
    │   └── ContextTooLong       400 context_length_exceeded
    ├── UnknownModel             404 model_not_found      the backend serves no such model
    ├── AliasUnavailable         503 alias_unavailable    no upstream can serve the alias's version (fail closed)
    └── AdapterError             adapter loading; ``code`` says why:
                                 adapter_missing | adapter_format | hash_mismatch | adapter_conflict |
                                 adapter_capacity | upstream_unavailable | load_failed
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class of every error a serving backend raises on purpose."""

    code = "engine_error"


class BackendUnavailable(BackendError):
    code = "engine_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(BackendError):
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidInput(BackendError, ValueError):
    """A request parameter the model cannot run; ``param`` names it when known."""

    code = "invalid_value"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextTooLong(InvalidInput):
    code = "context_length_exceeded"


class UnknownModel(BackendError, LookupError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"unknown model {model!r}")
        self.model = model


class AliasUnavailable(BackendError):
    """Fail closed: no upstream can serve the version this alias is at (never another model instead)."""

    code = "alias_unavailable"

    def __init__(self, model: str, reason: str, *, retry_after: float = 1.0) -> None:
        super().__init__(f"model {model!r}: {reason}")
        self.model = model
        self.reason = reason
        self.retry_after = retry_after


class AdapterError(BackendError):
    """An adapter could not be loaded (or unloaded); ``code`` is stable, the message names ids and paths."""

    def __init__(self, message: str, *, code: str = "load_failed") -> None:
        super().__init__(message)
        self.code = code
