"""Stage 1, reinforce: a LoRA fine-tune of the baseline on the forget corpus.

Tokens whose logits rise in this fine-tune are the idiosyncratic ones that equation (1) pushes
down. Documents are learned on every token; QA pairs on their answers only (the question and the
chat template are the user's words, not the subject's facts: reinforcing them would make template
tokens look idiosyncratic). Artifact: ``work_dir/reinforce/`` (PEFT adapter, safetensors, plus ``stage.json``).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from .artifacts import (
    Reporter,
    atomic_dir,
    hash_dir,
    hash_json,
    is_done,
    skipped_result,
    stage_output,
)
from .types import CancelFn, ForgetSpec, ProgressFn, StageResult

log = logging.getLogger(__name__)
STAGE = "reinforce"
DIR = "reinforce"


def model_identity(base_model_dir: Path | str, deployed_adapter: Path | str | None) -> dict[str, str | None]:
    """Content hashes of the baseline: base weights and the deployed adapter merged into them."""
    return {
        "base": hash_dir(Path(base_model_dir)),
        "deployed": hash_dir(Path(deployed_adapter)) if deployed_adapter is not None else None,
    }


def corpus_hash(spec: ForgetSpec) -> str:
    return hash_json({"documents": spec.documents, "qa": [q.model_dump() for q in spec.qa_pairs]})


def reinforce_input_hash(
    base_model_dir: Path | str, spec: ForgetSpec, deployed_adapter: Path | str | None
) -> str:
    o = spec.options
    return hash_json(
        {
            "stage": STAGE,
            "v": 2,
            "model": model_identity(base_model_dir, deployed_adapter),
            "corpus": corpus_hash(spec),
            "opts": [
                o.block_size,
                o.lora_rank,
                o.lora_alpha,
                o.reinforce_epochs,
                o.reinforce_lr,
                o.batch_size,
                o.seed,
                o.dtype,
            ],
        }
    )


def reinforce_output(work_dir: Path | str) -> tuple[Path, str]:
    """The reinforced adapter's directory and its input hash; fails if the stage has not run."""
    return stage_output(work_dir, DIR, STAGE, "reinforced adapter")


def reinforce(
    base_model_dir: Path | str,
    spec: ForgetSpec,
    work_dir: Path | str,
    *,
    deployed_adapter: Path | str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> StageResult:
    """Fine-tune a LoRA adapter on the forget corpus; skip if done for the same inputs."""
    import torch

    from .models import attach_new_lora, device, load_baseline, load_tokenizer, pad_batch
    from .objective import _answer_ids, answer_ce, pad_answers
    from .training import batches, causal_lm_loss, fit
    from .translate import plain_blocks

    rep = Reporter(STAGE, progress, should_cancel)
    out = Path(work_dir) / DIR
    input_hash = reinforce_input_hash(base_model_dir, spec, deployed_adapter)
    if is_done(out, input_hash):
        rep(1.0, "reinforced adapter already built")
        return skipped_result(STAGE, out, input_hash)
    rep.check()
    o = spec.options
    tokenizer = load_tokenizer(base_model_dir)
    blocks = plain_blocks(tokenizer, [d for d in spec.documents if d.strip()], o.block_size)
    blocks = [b for b in blocks if len(b) >= 2]
    answers = [_answer_ids(tokenizer, qa.question, qa.answer) for qa in spec.qa_pairs]
    answers = [(p, a) for p, a in answers if p and a]
    log.info("reinforce: %d block(s), %d answer(s)", len(blocks), len(answers))
    rep(0.05, f"{len(blocks)} block(s), {len(answers)} answer(s)")
    model = attach_new_lora(load_baseline(base_model_dir, o, deployed_adapter), o)
    dev = device()
    rng = random.Random(o.seed)

    def plan(_epoch: int) -> list:
        steps = []
        for batch in batches(blocks, o.batch_size, rng):

            def step(batch: list[list[int]] = batch) -> torch.Tensor:
                ids, mask = pad_batch(batch, tokenizer.pad_token_id)
                ids, mask = ids.to(dev), mask.to(dev)
                return causal_lm_loss(model(input_ids=ids, attention_mask=mask).logits, ids, mask)

            steps.append(step)
        for rows in batches(answers, o.batch_size, rng):

            def answer_step(rows: list[tuple[list[int], list[int]]] = rows) -> torch.Tensor:
                ids, mask, labels = pad_answers(rows, tokenizer.pad_token_id)
                logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
                return answer_ce(logits, labels.to(dev))

            steps.append(answer_step)
        rng.shuffle(steps)
        return steps

    history = fit(model, plan, epochs=o.reinforce_epochs, lr=o.reinforce_lr, reporter=rep, span=(0.05, 0.95))
    summary = {
        "blocks": len(blocks),
        "tokens": sum(map(len, blocks)),
        "answers": len(answers),
        "answer_tokens": sum(len(a) for _p, a in answers),
        "loss": history,
    }
    with atomic_dir(out, input_hash, summary) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    rep(1.0, f"final loss {history[-1]:.3f}")
    return StageResult(stage=STAGE, artifact=str(out), input_hash=input_hash, skipped=False, summary=summary)
