"""Errors raised by the unlearning pipeline.

::

    PipelineError            anything the pipeline raises on purpose
    ├── BadInput             the request itself is unusable: fail it for good, show the message
    └── Cancelled            should_cancel() said stop; the stage left no partial artifact behind

Anything else escaping a stage is a bug or a transient fault (out of memory, a lost disk) that a
retry may cure.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of the pipeline's own errors."""

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage

    def __str__(self) -> str:
        return f"[{self.stage}] {self.message}" if self.stage else self.message


class BadInput(PipelineError):
    """The request cannot be processed as given; the message says what to change."""


class Cancelled(PipelineError):
    """The caller asked the stage to stop (checked between batches)."""
