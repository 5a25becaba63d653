"""Request and result dataclasses of the inference engine (plain data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gpu_runtime.engine.errors import InvalidRequest

FinishReason = Literal["stop", "length"]

# Upper bound on top_logprobs, as in the OpenAI API; bigger values only cost time.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One completion request.

    ``prompt`` is either text (tokenized with the tokenizer's special tokens, e.g. BOS) or token ids
    (e.g. from :meth:`InferenceEngine.render_chat`). ``model`` is an alias, an adapter id or the
    base model's name; ``None`` means the base model.
    """

    prompt: str | list[int]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    # Keep generating past EOS (benchmarks want fixed output lengths, as vLLM's ignore_eos).
    ignore_eos: bool = False
    request_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.prompt, str):
            if not self.prompt:
                raise InvalidRequest("prompt: must not be empty")
        elif not self.prompt or not all(isinstance(t, int) and t >= 0 for t in self.prompt):
            raise InvalidRequest("prompt: token id list must be non-empty and hold non-negative ints")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens: must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 10.0:
            raise InvalidRequest(f"temperature: must be in [0, 10], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise InvalidRequest(f"seed: must fit a signed 64-bit integer, got {self.seed}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs: must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if isinstance(self.stop, str):
            # A bare string is a common client mistake (OpenAI accepts both); normalise instead of iterating chars.
            object.__setattr__(self, "stop", [self.stop])
        if any(not s for s in self.stop):
            raise InvalidRequest("stop: stop sequences must be non-empty strings")
        if len(self.stop) > 16:
            raise InvalidRequest(f"stop: at most 16 stop sequences, got {len(self.stop)}")


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One alternative token at a position: its id, its text and its log-probability."""

    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of a generated token under the model (before temperature/top_p), plus alternatives."""

    token_id: int
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the OpenAI API reports them."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token as streamed.

    ``text`` is the new text since the previous event; it may be empty while the text could still
    turn into a stop sequence or ends inside a multi-byte character. Concatenating every event's
    ``text`` gives :attr:`GenerationResult.text`. The last event has ``finish_reason`` and ``usage``.
    """

    index: int
    token_id: int
    text: str
    logprob: TokenLogprob | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A finished completion.

    ``token_ids`` and ``logprobs`` cover every generated token, including the ones that formed a stop
    sequence; ``text`` has the stop sequence trimmed off. ``adapter_id`` is the adapter version that
    served the whole request (``None`` = base model).
    """

    request_id: str
    model: str
    adapter_id: str | None
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    logprobs: list[TokenLogprob] | None = None
