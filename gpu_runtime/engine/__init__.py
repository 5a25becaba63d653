"""Inference engine: one base model, many LoRA adapters, hot-swappable aliases, batched generation."""

from gpu_runtime.engine.adapters import adapter_hash
from gpu_runtime.engine.engine import InferenceEngine, TokenStream
from gpu_runtime.engine.errors import (
    AdapterCapacityError,
    AdapterConflict,
    AdapterError,
    AdapterFormatError,
    AdapterHashMismatch,
    AdapterInUse,
    AdapterNotFound,
    ContextLengthExceeded,
    EngineError,
    EngineNotRunning,
    InvalidRequest,
    QueueFull,
    UnknownModel,
)
from gpu_runtime.engine.registry import AdapterInfo
from gpu_runtime.engine.scheduler import SchedulerStats
from gpu_runtime.engine.types import (
    GenerationRequest,
    GenerationResult,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)

__all__ = [
    "AdapterCapacityError",
    "AdapterConflict",
    "AdapterError",
    "AdapterFormatError",
    "AdapterHashMismatch",
    "AdapterInUse",
    "AdapterInfo",
    "AdapterNotFound",
    "ContextLengthExceeded",
    "EngineError",
    "EngineNotRunning",
    "GenerationRequest",
    "GenerationResult",
    "InferenceEngine",
    "InvalidRequest",
    "QueueFull",
    "SchedulerStats",
    "TokenEvent",
    "TokenLogprob",
    "TokenStream",
    "TopLogprob",
    "UnknownModel",
    "Usage",
    "adapter_hash",
]
