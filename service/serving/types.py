"""Plain data a serving backend takes and returns (no torch, no HTTP): prompts, completions, stream events.

The gateway's response writers read these by attribute, and the embedded engine's own result types have
the same attributes, so the embedded backend returns them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class Sampling(Protocol):
    """The sampling knobs of one request (the gateway's ``Sampling`` has exactly these)."""

    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    logprobs: bool
    top_logprobs: int


@dataclass(frozen=True, slots=True)
class Params:
    """Sampling knobs built by callers that are not an OpenAI route (verification)."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt as a backend will run it.

    ``chat`` prompts keep their ``messages`` (an upstream renders them with its own chat template);
    ``token_ids`` is set where the backend tokenized already (embedded). ``size`` is the prompt's length
    in tokens: exact when tokenized here, an estimate otherwise (used to reserve a tenant's token budget,
    which is settled on the usage the model reports).
    """

    chat: bool
    size: int
    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    token_ids: list[int] | None = None


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished completion; ``adapter_id`` is the adapter version that served it (``None``: base)."""

    text: str
    finish_reason: str
    usage: Usage
    adapter_id: str | None
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One streamed piece: new text, at most one token's logprob, and on the last one the finish reason."""

    text: str
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


def estimate_tokens(chars: int) -> int:
    """A prompt's size in tokens before an upstream tokenized it (about 4 characters a token in English)."""
    return max(1, chars // 4)
