"""Per-row next-token choice for a batch: greedy or temperature/top-p with a per-request generator.

Log-probabilities are reported under the model's own distribution (log-softmax of the raw logits),
independent of temperature and top-p, so they are comparable across requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class RowSampling:
    temperature: float
    top_p: float
    generator: torch.Generator | None  # None for greedy rows
    top_logprobs: int  # how many alternatives to report (0 = none)


@dataclass(slots=True)
class StepChoice:
    token_ids: list[int]
    logprobs: list[float]
    # Per row: list of (token_id, logprob), best first; empty when the row asked for none.
    top: list[list[tuple[int, float]]]
    # Rows whose sampling failed (index -> error): only those requests fail, the batch goes on.
    errors: dict[int, Exception] = field(default_factory=dict)


def _sample_row(logits: torch.Tensor, s: RowSampling) -> torch.Tensor:
    scaled = logits / s.temperature
    probs = torch.softmax(scaled, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p. The most likely token always stays, also
        # when top_p is below float32's resolution (1e-50 rounds to 0, which would drop every token).
        drop = cumulative - sorted_probs >= s.top_p
        drop[..., 0] = False
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    # Checked here, not left to multinomial: on a GPU an invalid distribution is a device-side assert
    # that poisons the whole process, not an exception this row could fail alone with.
    total = float(probs.sum())
    if not math.isfinite(total) or total <= 0.0:
        raise ValueError(f"sampling: the next-token distribution is not valid (mass {total})")
    return torch.multinomial(probs, 1, generator=s.generator)[0]


def choose_tokens(logits: torch.Tensor, rows: list[RowSampling]) -> StepChoice:
    """Pick one token per row of ``logits`` ([batch, vocab]); a row whose sampling raises is reported in
    ``errors`` (its token is the greedy one, to be discarded) instead of failing every row."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = torch.argmax(logits, dim=-1)
    errors: dict[int, Exception] = {}
    sampled = [i for i, r in enumerate(rows) if r.generator is not None and r.temperature > 0.0]
    if sampled:
        chosen = chosen.clone()
        for i in sampled:
            try:
                chosen[i] = _sample_row(logits[i], rows[i])
            except Exception as exc:  # e.g. a distribution that underflowed: this row only
                errors[i] = exc
    chosen_lp = logprobs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    k = max((r.top_logprobs for r in rows), default=0)
    top: list[list[tuple[int, float]]] = [[] for _ in rows]
    if k > 0:
        values, indices = torch.topk(logprobs, k, dim=-1)
        vals, idxs = values.tolist(), indices.tolist()
        for i, r in enumerate(rows):
            if r.top_logprobs:
                top[i] = list(zip(idxs[i][: r.top_logprobs], vals[i][: r.top_logprobs], strict=True))
    return StepChoice(token_ids=chosen.tolist(), logprobs=chosen_lp.tolist(), top=top, errors=errors)
