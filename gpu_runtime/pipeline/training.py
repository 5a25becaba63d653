"""The small LoRA training loop shared by ``reinforce`` and ``unlearn``: AdamW, padded batches,
progress and cancellation between batches."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from .artifacts import Reporter

T = TypeVar("T")


def batches(items: Sequence[T], size: int, rng: random.Random) -> list[list[T]]:
    order = list(range(len(items)))
    rng.shuffle(order)
    return [[items[i] for i in order[j : j + size]] for j in range(0, len(order), size)]


def causal_lm_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over real (unpadded) tokens."""
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def fit(
    model: Any,
    steps_per_epoch: Callable[[int], list[Callable[[], torch.Tensor]]],
    *,
    epochs: int,
    lr: float,
    reporter: Reporter,
    span: tuple[float, float] = (0.0, 1.0),
) -> list[float]:
    """Train ``model``'s trainable parameters. ``steps_per_epoch(epoch)`` returns closures that
    compute one batch's loss. Returns the mean loss of each epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    history: list[float] = []
    plan = [steps_per_epoch(e) for e in range(epochs)]
    total = max(1, sum(len(p) for p in plan))
    done = 0
    for e, steps in enumerate(plan):
        losses = []
        for step in steps:
            reporter.check()
            opt.zero_grad(set_to_none=True)
            loss = step()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            done += 1
            reporter(
                span[0] + (span[1] - span[0]) * done / total, f"epoch {e + 1}/{epochs} loss {losses[-1]:.3f}"
            )
        history.append(sum(losses) / max(1, len(losses)))
    model.eval()
    return history
