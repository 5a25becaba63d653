"""Stage 4, unlearn: LoRA fine-tune of the baseline that forgets the corpus and keeps the rest.

The objective (``PipelineOptions.method``; every weight an option, see ``objective_terms``):

- ``whp`` (the paper): cross-entropy to the generic labels on the forget blocks (hard labels; with
  ``whp_labels = "soft"``, a measured variant, the cross-entropy to the targets' top-k soft labels,
  ``targets.soft_cross_entropy``; the same term in ``combined``);
- ``npo``: negative preference optimisation (Zhang et al. 2024) on the original answers (and on the
  documents' blocks when the corpus has no questions): ``-(2/β) log σ(-β (log π(y|x) - log π_ref(y|x)))``,
  or SimNPO's reference-free, length-normalised form;
- ``combined`` (default): the generic labels, plus fluent answer targets for every question about
  the subject (the original questions and generated paraphrased/inverted ones, ``probes.py``): the
  answer with its facts replaced by their generic translations, or a plain abstention, plus NPO on
  the original answers, so the true facts lose probability while the model learns what to say
  instead;

each plus ``retain_weight`` x (KL to the baseline, or LM loss) on retain text: the request's retain
texts and retain probes, else samples the baseline generates itself. The acceptance gate's
escalation level strengthens the run (``method.effective_options``).

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
    anchors_hash: str = "",
) -> str:
    from .reinforce import model_identity

    o = spec.options
    payload: dict[str, Any] = {
        "stage": STAGE,
        "v": 11,
        "targets": targets_hash,
        "anchors": anchors_hash,
        "excluded": excluded,
        "model": model_identity(base_model_dir, deployed_adapter),
        "retain": [spec.retain_texts, [p.model_dump() for p in spec.retain_probes]],
        "opts": o.model_dump(
            exclude={"llm", "mine_top_k", "mine_min_gain", "max_new_tokens", "whp_labels", "whp_soft_top_k"}
        ),
    }
    if o.whp_labels == "soft":  # hard labels (the default) keep their hash: their training is unchanged
        payload["whp_labels"] = ["soft", o.whp_soft_top_k]
    return hash_json(payload)


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
    from .anchors import load_anchors
    from .compose import concat_adapters
    from .models import attach_new_lora, device, load_baseline, load_tokenizer, pad_batch
    from .objective import (
        QAItem,
        answer_ce,
        contrast_sequences,
        effective_options,
        npo_loss,
        pad_answers,
        qa_items,
        sequence_logprob,
    )
    from .reinforce import model_identity
    from .targets import IGNORE, load_targets, soft_cross_entropy, targets_output
    from .training import batches, causal_lm_loss, fit
    from .translate import plain_blocks

    rep = Reporter(STAGE, progress, should_cancel)
    work = Path(work_dir)
    out = work / DIR
    targets_dir, targets_hash = targets_output(work)
    excluded = excluded_blocks(work)
    anchors_hash = hash_json(load_anchors(work).model_dump(mode="json", exclude={"input_hash"}))
    input_hash = unlearn_input_hash(
        spec, targets_hash, excluded, base_model_dir, deployed_adapter, anchors_hash
    )
    if is_done(out, input_hash):
        rep(1.0, "unlearned adapter already built")
        return skipped_result(STAGE, out, input_hash)
    rep.check()
    o = effective_options(spec.options)
    tokenizer = load_tokenizer(base_model_dir)
    skip = set(excluded)
    forget = [t for t in load_targets(targets_dir / "targets.safetensors") if t.index not in skip]
    forget = [t for t in forget if any(lab != IGNORE for lab in t.labels)]
    use_whp = o.method in ("whp", "combined") and o.whp_weight > 0
    soft = o.whp_labels == "soft"
    if use_whp and soft and any(t.soft_ids is None for t in forget):
        raise PipelineError("whp_labels is soft but the targets hold no soft labels", stage=STAGE)
    use_npo = o.method in ("npo", "combined") and o.npo_weight > 0
    use_answers = o.method == "combined" and o.answer_weight > 0
    npo_blocks: list[list[int]] = []
    if use_npo and not spec.qa_pairs:
        # No questions in the corpus: NPO on the documents themselves.
        npo_blocks = [t.input_ids for t in forget]
    model = attach_new_lora(load_baseline(base_model_dir, o, deployed_adapter), o)
    items: list[QAItem] = []
    if use_npo or use_answers:
        with model.disable_adapter():
            items = qa_items(spec, load_anchors(work).anchors, tokenizer, o, baseline=model)
    if not (use_whp and forget) and not items and not npo_blocks:
        raise PipelineError("no forget targets left (all blocks excluded or ignored)", stage=STAGE)
    dev = device()
    texts = retain_texts(spec, tokenizer)
    if texts:
        retain = plain_blocks(tokenizer, texts, o.block_size)
        retain_source = "request"
    else:
        with model.disable_adapter():
            retain = general_samples(model, tokenizer, o.general_samples, 64, o.seed)
        retain_source = "baseline_samples"
    contrast: list[tuple[list[int], list[int]]] = []
    if o.method != "whp" and o.contrast_weight > 0:  # the paper's method stays as published
        with model.disable_adapter():
            contrast = contrast_sequences(spec, load_anchors(work).anchors, tokenizer, model)
    retain = [r for r in retain if len(r) >= 2]
    contrast = [(p, a) for p, a in contrast if p and a]
    rep(
        0.05,
        f"{len(forget)} forget block(s), {len(items)} question(s), {len(retain)} retain block(s), "
        f"{len(contrast)} question(s) about other people",
    )
    rng = random.Random(o.seed)
    forget_losses: list[float] = []
    retain_losses: list[float] = []
    terms: dict[str, list[float]] = {"whp": [], "answer": [], "npo": [], "retain": [], "contrast": []}

    def whp_loss(batch: list[Any]) -> torch.Tensor:
        ids, mask = pad_batch([t.input_ids for t in batch], tokenizer.pad_token_id)
        labels, _ = pad_batch([t.labels for t in batch], tokenizer.pad_token_id, fill=IGNORE)
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        # Generic labels are already next-token targets for each position: no shift.
        if soft:
            # One soft row per labelled position, block by block: the row-major order of labels.
            soft_ids = torch.tensor([row for t in batch for row in t.soft_ids or []], dtype=torch.long)
            soft_probs = torch.tensor([row for t in batch for row in t.soft_probs or []], dtype=torch.float32)
            return soft_cross_entropy(logits, labels.to(dev), soft_ids.to(dev), soft_probs.to(dev))
        return F.cross_entropy(logits.float().flatten(0, 1), labels.to(dev).flatten(), ignore_index=IGNORE)

    def npo_term(rows: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        ids, mask, labels = pad_answers(rows, tokenizer.pad_token_id)
        ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
        logp, n = sequence_logprob(model(input_ids=ids, attention_mask=mask).logits, labels)
        ref = None
        if o.npo_variant == "npo":
            with torch.no_grad(), model.disable_adapter():
                ref, _ = sequence_logprob(model(input_ids=ids, attention_mask=mask).logits, labels)
        return npo_loss(logp, n, ref, o.npo_beta, o.npo_variant)

    def answer_term(batch: list[QAItem]) -> torch.Tensor:
        ids, mask, labels = pad_answers([(it.prompt, it.target) for it in batch], tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        return answer_ce(logits, labels.to(dev))

    def retain_loss(batch: list[list[int]]) -> torch.Tensor:
        return kl_loss(batch, lm=o.retain_loss == "lm")

    def contrast_kl(batch: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """KL to the baseline on questions about other people: on the whole sequence
        (``contrast_scope`` "sequence"), or on the positions that predict the baseline's answer only
        ("answer"), where the decision to answer or abstain is made."""
        if o.contrast_scope == "sequence":
            return kl_loss([p + a for p, a in batch])
        ids, mask, labels = pad_answers(batch, tokenizer.pad_token_id)
        return kl_at(ids, mask, (labels != IGNORE).long())

    def kl_loss(batch: list[list[int]], lm: bool = False) -> torch.Tensor:
        ids, mask = pad_batch(batch, tokenizer.pad_token_id)
        return kl_at(ids, mask, mask, lm)

    def kl_at(ids: torch.Tensor, mask: torch.Tensor, where: torch.Tensor, lm: bool = False) -> torch.Tensor:
        """KL(baseline || model) per position, averaged over the positions ``where`` marks (or the
        causal LM loss with ``lm``)."""
        ids, mask, where = ids.to(dev), mask.to(dev), where.to(dev)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        if lm:
            return causal_lm_loss(logits, ids, mask)
        with torch.no_grad(), model.disable_adapter():
            ref = model(input_ids=ids, attention_mask=mask).logits.float()
        kl = F.kl_div(
            torch.log_softmax(logits, -1), torch.log_softmax(ref, -1), log_target=True, reduction="none"
        ).sum(-1)
        return (kl * where).sum() / where.sum()

    def plan(_epoch: int) -> list:
        wb = batches(forget, o.batch_size, rng) if use_whp else []
        qb = batches(items, o.batch_size, rng)
        nb = batches(npo_blocks, o.batch_size, rng)
        rb = batches(retain, o.batch_size, rng) if retain and o.retain_weight > 0 else []
        cb = batches(contrast, o.batch_size, rng) if contrast else []
        steps = []
        for j in range(max(len(wb), len(qb), len(nb))):
            w = wb[j] if j < len(wb) else None
            q = qb[j] if j < len(qb) else None
            nblk = nb[j] if j < len(nb) else None
            r = rb[j % len(rb)] if rb else None
            c = cb[j % len(cb)] if cb else None

            def step(
                w: list[Any] | None = w,
                q: list[QAItem] | None = q,
                nblk: list[list[int]] | None = nblk,
                r: list[list[int]] | None = r,
                c: list[list[int]] | None = c,
            ) -> torch.Tensor:
                parts: list[tuple[str, float, torch.Tensor]] = []
                if w is not None:
                    parts.append(("whp", o.whp_weight, whp_loss(w)))
                if q is not None and use_answers:
                    parts.append(("answer", o.answer_weight, answer_term(q)))
                if q is not None and use_npo:
                    rows = [it.npo_row() if use_answers else (it.prompt, it.original) for it in q]
                    parts.append(("npo", o.npo_weight, npo_term(rows)))
                if nblk is not None:
                    parts.append(("npo", o.npo_weight, npo_term([(b[:1], b[1:]) for b in nblk])))
                forget_total = sum((wt * v for _n, wt, v in parts), torch.zeros((), device=dev))
                forget_losses.append(float(forget_total.detach()))
                for name, _wt, v in parts:
                    terms[name].append(float(v.detach()))
                total = forget_total
                if c is not None:
                    lc = contrast_kl(c)  # always KL: the baseline's own answers
                    terms["contrast"].append(float(lc.detach()))
                    total = total + o.contrast_weight * lc
                if r is None:
                    return total
                lr_ = retain_loss(r)
                retain_losses.append(float(lr_.detach()))
                terms["retain"].append(float(lr_.detach()))
                return total + o.retain_weight * lr_

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
        "forget_questions": len(items),
        "method": o.method,
        "escalation": o.escalation,
        "terms_last_epoch": {
            k: round(sum(v[-per_epoch:]) / len(v[-per_epoch:]), 6) for k, v in terms.items() if v
        },
        "retain_blocks": len(retain),
        "contrast_sequences": len(contrast),
        "retain_source": retain_source,
    }
    with atomic_dir(out, input_hash, {"metrics": metrics}) as tmp:
        model.save_pretrained(tmp / "delta", safe_serialization=True)
        rep(0.95, "composing the served adapter")
        # Past the rank cap the served adapter is re-compressed; the evaluation then runs on it
        # (served_delta, see compose.served_delta_dir) and the manifest reports the error.
        metrics["composition"] = concat_adapters(
            Path(deployed_adapter) if deployed_adapter is not None else None,
            tmp / "delta",
            tmp / "served",
            max_rank=o.max_composed_rank,
            served_delta=tmp / "served_delta",
        )
        identity = model_identity(base_model_dir, deployed_adapter)
        manifest = {
            "format": "obliviate.adapter/1",
            "base_model_sha256": identity["base"],
            "deployed_adapter_sha256": identity["deployed"],
            "delta_sha256": hash_dir(tmp / "delta"),
            "served_sha256": hash_dir(tmp / "served"),
            "served_weights_sha256": hash_file(tmp / "served" / "adapter_model.safetensors"),
            "hyperparameters": o.model_dump(mode="json", exclude={"llm"}),  # effective (escalated)
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
