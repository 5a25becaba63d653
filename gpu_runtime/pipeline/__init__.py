"""The unlearning pipeline (WHP with human review), usable without the web service.

Stages, one module each: ``reinforce``, ``anchors`` (mine_anchors), ``translate``, ``targets``
(generate_targets), ``unlearn``, ``evaluate``, plus ``compose`` for sequential requests and
``run.run_pipeline`` for all of them. Importing this package loads no torch: the types and errors
below are what the service needs.
"""

from .errors import BadInput, Cancelled, PipelineError
from .types import (
    Anchor,
    AnchorDictionary,
    EntityHint,
    ForgetSpec,
    LLMOptions,
    PipelineOptions,
    PipelineResult,
    Probe,
    QAPair,
    StageResult,
)

__all__ = [
    "Anchor",
    "AnchorDictionary",
    "BadInput",
    "Cancelled",
    "EntityHint",
    "ForgetSpec",
    "LLMOptions",
    "PipelineError",
    "PipelineOptions",
    "PipelineResult",
    "Probe",
    "QAPair",
    "StageResult",
]
