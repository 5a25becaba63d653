"""Stage 4, unlearn: LoRA fine-tune of the baseline on the generic targets, with a retain regulariser.

Loss = cross-entropy to the generic labels on the forget blocks + ``retain_weight`` x (KL to the
baseline, or LM loss) on retain text: the request's retain texts and retain probes, else samples
the baseline generates itself (general text in the model's own distribution).

Artifact: ``work_dir/unlearn/`` with ``delta/`` (this request's PEFT adapter, safetensors),
``served/`` (the adapter to serve: the delta, or the rank-concatenation of the deployed adapter
and the delta, see ``compose.py``) and ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .artifacts import (
    Reporter,
    atomic_dir,
    hash_dir,
    hash_file,
    hash_json,
    is_done,
    skipped_result,
    stage_output,
)
from .errors import PipelineError
from .types import CancelFn, ForgetSpec, ProgressFn, StageResult

log = logging.getLogger(__name__)
STAGE = "unlearn"
DIR = "unlearn"
REVIEW_FILE = "target_review.json"


def excluded_blocks(work_dir: Path) -> list[int]:
    """Blocks a target reviewer excluded (``target_review.json``: {"excluded_blocks": [...]})."""
    path = work_dir / REVIEW_FILE
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return sorted({int(i) for i in data.get("excluded_blocks", [])})


def retain_texts(spec: ForgetSpec, tokenizer: Any) -> list[str]:
    from .models import render_qa
    from .types import QAPair

    texts = [t for t in spec.retain_texts if t.strip()]
    texts += [
        render_qa(tokenizer, QAPair(question=p.prompt, answer=p.reference))
        for p in spec.retain_probes
        if p.chat and p.reference
    ]
    texts += [p.prompt + p.reference for p in spec.retain_probes if not p.chat and p.reference]
    return texts


@torch.no_grad()
def general_samples(model: Any, tokenizer: Any, n: int, length: int, seed: int) -> list[list[int]]:
    """Token sequences sampled from the baseline from its BOS (or a newline): general text."""
    from .models import special_prefix

    if n == 0:
        return []
    start = special_prefix(tokenizer) or tokenizer.encode("\n", add_special_tokens=False)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dev = next(model.parameters()).device
    ids = torch.tensor([start] * n, device=dev)
    for _ in range(length):
        logits = model(input_ids=ids).logits[:, -1].float().cpu()
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).to(dev)
        ids = torch.cat([ids, nxt], dim=1)
    return ids.cpu().tolist()


def unlearn_input_hash(
    spec: ForgetSpec,
    targets_hash: str,
    excluded: list[int],
    base_model_dir: Path | str,
    deployed_adapter: Path | str | None,
) -> str:
    from .reinforce import model_identity

    o = spec.options
    return hash_json(
        {
            "stage": STAGE,
            "v": 1,
            "targets": targets_hash,
            "excluded": excluded,
            "model": model_identity(base_model_dir, deployed_adapter),
            "retain": [spec.retain_texts, [p.model_dump() for p in spec.retain_probes]],
            "opts": o.model_dump(exclude={"llm", "mine_top_k", "mine_min_gain", "max_new_tokens"}),
        }
    )


def unlearn_output(work_dir: Path | str) -> tuple[Path, str]:
    return stage_output(work_dir, DIR, STAGE, "unlearned adapter")


def unlearn(
    base_model_dir: Path | str,
    spec: ForgetSpec,
    work_dir: Path | str,
    *,
    deployed_adapter: Path | str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> StageResult:
    """Train this request's delta adapter and write the adapter to serve; skip if done."""
    from .compose import concat_adapters
    from .models import attach_new_lora, device, load_baseline, load_tokenizer, pad_batch
    from .reinforce import model_identity
    from .targets import IGNORE, load_targets, targets_output
    from .training import batches, causal_lm_loss, fit
    from .translate import plain_blocks

    rep = Reporter(STAGE, progress, should_cancel)
    work = Path(work_dir)
    out = work / DIR
    targets_dir, targets_hash = targets_output(work)
    excluded = excluded_blocks(work)
    input_hash = unlearn_input_hash(spec, targets_hash, excluded, base_model_dir, deployed_adapter)
    if is_done(out, input_hash):
        rep(1.0, "unlearned adapter already built")
        return skipped_result(STAGE, out, input_hash)
    rep.check()
    o = spec.options
    tokenizer = load_tokenizer(base_model_dir)
    skip = set(excluded)
    forget = [t for t in load_targets(targets_dir / "targets.safetensors") if t.index not in skip]
    forget = [t for t in forget if any(lab != IGNORE for lab in t.labels)]
    if not forget:
        raise PipelineError("no forget targets left (all blocks excluded or ignored)", stage=STAGE)
    model = attach_new_lora(load_baseline(base_model_dir, o, deployed_adapter), o)
    dev = device()
    texts = retain_texts(spec, tokenizer)
    if texts:
        retain = plain_blocks(tokenizer, texts, o.block_size)
        retain_source = "request"
    else:
        with model.disable_adapter():
            retain = general_samples(model, tokenizer, o.general_samples, 64, o.seed)
        retain_source = "baseline_samples"
    retain = [r for r in retain if len(r) >= 2]
    rep(0.05, f"{len(forget)} forget block(s), {len(retain)} retain block(s)")
    rng = random.Random(o.seed)
    forget_losses: list[float] = []
    retain_losses: list[float] = []

    def forget_loss(batch: list[Any]) -> torch.Tensor:
        ids, mask = pad_batch([t.input_ids for t in batch], tokenizer.pad_token_id)
        labels, _ = pad_batch([t.labels for t in batch], tokenizer.pad_token_id, fill=IGNORE)
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        # Generic labels are already next-token targets for each position: no shift.
        return F.cross_entropy(logits.float().flatten(0, 1), labels.to(dev).flatten(), ignore_index=IGNORE)

    def retain_loss(batch: list[list[int]]) -> torch.Tensor:
        ids, mask = pad_batch(batch, tokenizer.pad_token_id)
        ids, mask = ids.to(dev), mask.to(dev)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        if o.retain_loss == "lm":
            return causal_lm_loss(logits, ids, mask)
        with torch.no_grad(), model.disable_adapter():
            ref = model(input_ids=ids, attention_mask=mask).logits.float()
        kl = F.kl_div(
            torch.log_softmax(logits, -1), torch.log_softmax(ref, -1), log_target=True, reduction="none"
        ).sum(-1)
        return (kl * mask).sum() / mask.sum()

    def plan(_epoch: int) -> list:
        fb = batches(forget, o.batch_size, rng)
        rb = batches(retain, o.batch_size, rng) if retain and o.retain_weight > 0 else []
        steps = []
        for j, b in enumerate(fb):
            r = rb[j % len(rb)] if rb else None

            def step(b: list[Any] = b, r: list[list[int]] | None = r) -> torch.Tensor:
                lf = forget_loss(b)
                forget_losses.append(float(lf.detach()))
                if r is None:
                    return lf
                lr_ = retain_loss(r)
                retain_losses.append(float(lr_.detach()))
                return lf + o.retain_weight * lr_

            steps.append(step)
        return steps

    t0 = time.monotonic()
    history = fit(model, plan, epochs=o.unlearn_epochs, lr=o.unlearn_lr, reporter=rep, span=(0.05, 0.9))
    per_epoch = max(1, len(forget_losses) // o.unlearn_epochs)
    metrics = {
        "loss": history,
        "forget_loss_first_epoch": sum(forget_losses[:per_epoch]) / per_epoch,
        "forget_loss_last_epoch": sum(forget_losses[-per_epoch:]) / per_epoch,
        "retain_loss_last_epoch": (sum(retain_losses[-per_epoch:]) / per_epoch) if retain_losses else None,
        "train_seconds": round(time.monotonic() - t0, 2),
        "forget_blocks": len(forget),
        "retain_blocks": len(retain),
        "retain_source": retain_source,
    }
    with atomic_dir(out, input_hash, {"metrics": metrics}) as tmp:
        model.save_pretrained(tmp / "delta", safe_serialization=True)
        rep(0.95, "composing the served adapter")
        if deployed_adapter is not None:
            concat_adapters(Path(deployed_adapter), tmp / "delta", tmp / "served")
        else:
            concat_adapters(None, tmp / "delta", tmp / "served")
        identity = model_identity(base_model_dir, deployed_adapter)
        manifest = {
            "format": "obliviate.adapter/1",
            "base_model_sha256": identity["base"],
            "deployed_adapter_sha256": identity["deployed"],
            "delta_sha256": hash_dir(tmp / "delta"),
            "served_sha256": hash_dir(tmp / "served"),
            "served_weights_sha256": hash_file(tmp / "served" / "adapter_model.safetensors"),
            "hyperparameters": o.model_dump(mode="json", exclude={"llm"}),
            "data": {
                "corpus_sha256": _corpus_hash(spec),
                "targets_input_sha256": targets_hash,
                "retain_sha256": hash_json([spec.retain_texts, [p.model_dump() for p in spec.retain_probes]]),
                "excluded_blocks": excluded,
            },
            "metrics": metrics,
            "versions": _versions(),
            "created_at": time.time(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (tmp / "served" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rep(
        1.0,
        f"forget loss {metrics['forget_loss_first_epoch']:.3f} -> {metrics['forget_loss_last_epoch']:.3f}",
    )
    return StageResult(
        stage=STAGE, artifact=str(out), input_hash=input_hash, skipped=False, summary={"metrics": metrics}
    )


def _corpus_hash(spec: ForgetSpec) -> str:
    from .reinforce import corpus_hash

    return corpus_hash(spec)


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
