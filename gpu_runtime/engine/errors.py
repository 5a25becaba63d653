"""Errors raised by the inference engine; the gateway maps each to one HTTP status.

Exception tree (suggested HTTP status for an OpenAI-compatible gateway)::

    EngineError                      500  base class; anything unexpected in the engine
    ├── EngineNotRunning             503  submit before start() or after close()
    ├── QueueFull                    429  bounded queue is full; carries retry_after (seconds)
    ├── InvalidRequest               400  bad sampling parameters, empty prompt, ...
    │   └── ContextLengthExceeded    400  prompt + max_tokens longer than the model's context
    ├── UnknownModel                 404  model name is neither an alias, a loaded adapter nor the base
    └── AdapterError                      adapter loading and cache management
        ├── AdapterNotFound          404  adapter directory or file missing
        ├── AdapterFormatError       400  not a safetensors LoRA adapter (e.g. a pickle ``.bin``)
        ├── AdapterHashMismatch      409  content hash differs from the expected one
        ├── AdapterConflict          409  same id already loaded with different content (ids are immutable)
        ├── AdapterInUse             409  unload refused: an alias points to it
        └── AdapterCapacityError     503  cache is full and every cached adapter is in use or aliased
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class EngineNotRunning(EngineError):
    """The engine is not started, or is shutting down."""


class QueueFull(EngineError):
    """The request queue is full; retry after ``retry_after`` seconds (maps to 429 + Retry-After)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequest(EngineError, ValueError):
    """A request parameter is out of range; the message names it."""


class ContextLengthExceeded(InvalidRequest):
    """Prompt tokens plus ``max_tokens`` do not fit the model's context window."""


class UnknownModel(EngineError, LookupError):
    """The requested model name resolves to nothing the engine serves."""

    def __init__(self, model: str) -> None:
        super().__init__(f"unknown model {model!r}: not an alias, a loaded adapter or the base model")
        self.model = model


class AdapterError(EngineError):
    """Base class of adapter loading and cache errors."""


class AdapterNotFound(AdapterError, FileNotFoundError):
    """The adapter directory or one of its files does not exist."""


class AdapterFormatError(AdapterError, ValueError):
    """The directory is not a loadable safetensors LoRA adapter."""


class AdapterHashMismatch(AdapterError):
    """The adapter's content hash differs from the one the caller expected."""

    def __init__(self, adapter_id: str, expected: str, actual: str) -> None:
        super().__init__(
            f"adapter {adapter_id!r}: content hash sha256:{actual} does not match expected {expected}; "
            "refusing to load (the files changed or the wrong version was deployed)"
        )
        self.adapter_id = adapter_id
        self.expected = expected
        self.actual = actual


class AdapterConflict(AdapterError):
    """An adapter id is already loaded with different content; adapter ids are immutable versions."""


class AdapterInUse(AdapterError):
    """The adapter cannot be unloaded because an alias points to it."""


class AdapterCapacityError(AdapterError):
    """No free slot in the adapter cache: every cached adapter is serving requests or aliased."""
