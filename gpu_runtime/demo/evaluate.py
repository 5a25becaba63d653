"""Exact-answer accuracy of a chat model on QA pairs, by batched greedy generation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gpu_runtime.demo.world import QA

__all__ = ["answer_accuracy", "generate_answers", "is_correct", "normalize"]

_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Collapse runs of whitespace and strip, so spacing differences do not count as errors."""
    return _WS.sub(" ", text).strip()


def is_correct(expected: str, generated: str) -> bool:
    """The expected answer appears verbatim (up to whitespace) in the generated text."""
    return normalize(expected) in normalize(generated)


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> list[str]:
    """Greedy chat answers to single-turn questions, batched with left padding."""
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers: list[str] = []
    try:
        for start in range(0, len(questions), batch_size):
            chunk = questions[start : start + batch_size]
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                )
                for q in chunk
            ]
            enc = tokenizer(prompts, padding=True, add_special_tokens=False, return_tensors="pt").to(device)
            out = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return answers


def answer_accuracy(
    model_dir: str | Path,
    qa_pairs: Sequence[QA],
    max_new_tokens: int = 48,
    *,
    batch_size: int = 64,
) -> float:
    """Fraction of `qa_pairs` whose greedy chat answer contains the expected answer exactly."""
    if not qa_pairs:
        raise ValueError("qa_pairs is empty")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    generated = generate_answers(
        model,
        tokenizer,
        [qa.question for qa in qa_pairs],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    hits = sum(is_correct(qa.answer, g) for qa, g in zip(qa_pairs, generated, strict=True))
    return hits / len(qa_pairs)
