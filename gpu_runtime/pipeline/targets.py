"""Stage 3, generate targets: WHP equation (1) on every position of the forget corpus.

    label = argmax(g - alpha * ReLU(r - g)),  g = baseline(translated)[mapping], r = reinforced(original)

with first-occurrence masking (a position predicting a repeated anchor gets label -100) and the
first tokens of translations already used in the block lowered to the row's mean logit in g.
Beyond the paper (``translate.LabelRules``; ``method="whp"`` keeps the paper's labels): positions
that ``TranslatedBlock.unlabelled`` lists get -100 (QA question and template tokens, the final
position), and inside a whole-value anchor the true next token is set to the lowest float in g
(``suppressed``), so no token of a card number or date is labelled with its true continuation.
The baseline and the reinforced model share one copy of the weights: the reinforced model is the
baseline plus the reinforcement LoRA, and ``disable_adapter()`` gives the baseline back.
Per-position confidence is the baseline's probability of the chosen label; blocks whose mean or
minimum confidence is below the thresholds are flagged for review.

Soft labels (``PipelineOptions.whp_labels = "soft"``, a measured variant; hard labels are the
default and the paper's): each labelled position also keeps the ``whp_soft_top_k`` most likely
tokens of softmax(v_generic), renormalised over those k, with the hard label first. The unlearn
stage then trains the cross-entropy to that distribution (:func:`soft_cross_entropy`). A whole
value's suppressed true token has the lowest float in g, so it is never among the k.

Artifact: ``work_dir/targets/`` with ``targets.safetensors`` (flat ``input_ids``, ``labels``,
``confidence`` and ``offsets`` of the blocks; with soft labels also ``soft_ids`` int32 [N, k] and
``soft_probs`` float32 [N, k], one row per labelled position in order), ``blocks.json`` (per-block
statistics and flags) and ``review.json`` (the flagged blocks decoded for the target review,
``review.py``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .artifacts import Reporter, atomic_dir, hash_json, is_done, read_marker, skipped_result, stage_output
from .translate import TranslatedBlock, label_rules
from .types import CancelFn, ForgetSpec, ProgressFn, StageResult

log = logging.getLogger(__name__)
STAGE = "generate_targets"
DIR = "targets"
IGNORE = -100
SUPPRESSED = torch.finfo(torch.float32).min


@dataclass
class BlockTargets:
    doc: int
    index: int
    input_ids: list[int]
    labels: list[int]  # labels[p] is the target of the logits at position p (already shifted)
    confidence: list[float]  # NaN where the label is ignored
    # Soft labels (whp_labels "soft"): one row of k token ids / probabilities per labelled position
    # (labels[p] != IGNORE), in position order; None with hard labels.
    soft_ids: list[list[int]] | None = None
    soft_probs: list[list[float]] | None = None


def lowering_mask(block: TranslatedBlock, vocab: int) -> torch.Tensor:
    """[T, V] bool: True where a used translation's first token is lowered."""
    mask = torch.zeros((len(block.original_ids), vocab), dtype=torch.bool)
    for pos, tok in block.used_first_tokens:
        if tok < vocab:
            mask[pos:, tok] = True
    return mask


def ignore_mask(block: TranslatedBlock) -> torch.Tensor:
    ignore = torch.tensor([m < 0 for m in block.mapping], dtype=torch.bool)
    if block.masked:
        ignore[torch.tensor(block.masked, dtype=torch.long)] = True
    if block.unlabelled:
        ignore[torch.tensor(block.unlabelled, dtype=torch.long)] = True
    return ignore


def suppress_mask(block: TranslatedBlock, vocab: int) -> torch.Tensor | None:
    """[T, V] bool: True where a whole value's true next token may not be the label (None: nowhere)."""
    if not block.suppressed:
        return None
    mask = torch.zeros((len(block.original_ids), vocab), dtype=torch.bool)
    for pos, tok in block.suppressed:
        if tok < vocab:
            mask[pos, tok] = True
    return mask


def generic_logits(
    g: torch.Tensor,
    r: torch.Tensor,
    alpha: float,
    lower: torch.Tensor | None = None,
    suppress: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(g after lowering and suppression, v_generic = g - alpha * ReLU(r - g)), in float32.

    Lowered entries of g are set to the row's mean logit before the equation, as in the reference;
    suppressed entries (after lowering, so the mean stays finite) to the lowest float (not -inf:
    with alpha = 0, 0 * inf would be NaN, and argmax picks NaN).
    """
    g = g.float()
    r = r.float()
    if lower is not None and bool(lower.any()):
        g = torch.where(lower, g.mean(dim=-1, keepdim=True).expand_as(g), g)
    if suppress is not None:
        g = g.masked_fill(suppress, SUPPRESSED)
    return g, g - alpha * torch.relu(r - g)


def generic_labels(
    g: torch.Tensor,
    r: torch.Tensor,
    alpha: float,
    lower: torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    suppress: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equation (1) on aligned logit rows g (baseline, translated) and r (reinforced, original).

    Returns (labels with -100 where ignored, confidence = softmax(g)[label], NaN where ignored).
    See :func:`generic_logits` for the lowering and the suppression.
    """
    labels, conf, _v = _labels_and_logits(g, r, alpha, lower, ignore, suppress)
    return labels, conf


def _labels_and_logits(
    g: torch.Tensor,
    r: torch.Tensor,
    alpha: float,
    lower: torch.Tensor | None,
    ignore: torch.Tensor | None,
    suppress: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, v = generic_logits(g, r, alpha, lower, suppress)
    labels = v.argmax(dim=-1)
    conf = torch.softmax(g, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if ignore is not None:
        labels = labels.masked_fill(ignore, IGNORE)
        conf = conf.masked_fill(ignore, math.nan)
    return labels, conf, v


def soft_labels(v: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of softmax(v) renormalised over the k, per row: (ids int64 [..., k], probs float32).

    ``labels`` is argmax(v) (ignored rows may hold anything: the caller drops them); it is put
    first, so the hard label is always the top soft id, also when v ties at its maximum (equal v,
    equal probability: the distribution is the same).
    """
    v = v.float()
    k = min(k, v.shape[-1])
    ids = v.topk(k, dim=-1).indices
    lab = labels.clamp(min=0).unsqueeze(-1)
    ids = torch.where(ids == lab, ids[..., :1].expand_as(ids), ids)  # swap the label to the front
    ids[..., 0] = lab.squeeze(-1)
    probs = torch.softmax(v.gather(-1, ids), dim=-1)
    return ids, probs


def soft_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, soft_ids: torch.Tensor, soft_probs: torch.Tensor
) -> torch.Tensor:
    """Mean over the labelled positions (labels != -100) of -sum_k p_k log softmax(logits)[id_k].

    ``soft_ids``/``soft_probs`` [M, k] hold one row per labelled position of ``labels`` [B, T] in
    row-major order (block by block, position by position), as the targets artifact stores them.
    With k = 1 this is the hard labels' cross-entropy.
    """
    keep = labels != IGNORE
    if int(keep.sum()) != soft_ids.shape[0]:
        raise ValueError(f"{int(keep.sum())} labelled positions but {soft_ids.shape[0]} soft rows")
    logp = torch.log_softmax(logits.float()[keep], dim=-1).gather(-1, soft_ids.long())
    return -(soft_probs.to(logp.dtype) * logp).sum(-1).mean()


@torch.no_grad()
def compute_targets(
    model: Any,
    blocks: Sequence[TranslatedBlock],
    *,
    alpha: float,
    batch_size: int,
    pad_id: int,
    reporter: Reporter | None = None,
    soft_top_k: int = 0,
) -> list[BlockTargets]:
    """Batched targets. ``model`` is a PeftModel whose active adapter is the reinforcement.

    ``soft_top_k`` > 0: each target also holds its soft labels (:func:`soft_labels`)."""
    from .models import pad_batch

    dev = next(model.parameters()).device
    out: list[BlockTargets] = []
    for b0 in range(0, len(blocks), batch_size):
        if reporter is not None:
            reporter.check()
        batch = blocks[b0 : b0 + batch_size]
        ids_o, mask_o = pad_batch([b.original_ids for b in batch], pad_id)
        ids_t, mask_t = pad_batch([b.translated_ids for b in batch], pad_id)
        r_all = model(input_ids=ids_o.to(dev), attention_mask=mask_o.to(dev)).logits
        with model.disable_adapter():
            g_all = model(input_ids=ids_t.to(dev), attention_mask=mask_t.to(dev)).logits
        for i, blk in enumerate(batch):
            n = len(blk.original_ids)
            idx = torch.tensor(blk.mapping, dtype=torch.long, device=g_all.device).clamp(min=0)
            g = g_all[i].index_select(0, idx)
            r = r_all[i, :n]
            vocab = g.shape[-1]
            sup = suppress_mask(blk, vocab)
            labels, conf, v = _labels_and_logits(
                g,
                r,
                alpha,
                lowering_mask(blk, vocab).to(g.device),
                ignore_mask(blk).to(g.device),
                sup.to(g.device) if sup is not None else None,
            )
            target = BlockTargets(
                blk.doc, blk.index, list(blk.original_ids), labels.cpu().tolist(), conf.cpu().tolist()
            )
            if soft_top_k > 0:
                keep = labels != IGNORE
                ids, probs = soft_labels(v[keep], labels[keep], soft_top_k)
                target.soft_ids = ids.cpu().tolist()
                target.soft_probs = probs.cpu().tolist()
            out.append(target)
        if reporter is not None:
            reporter(
                0.2 + 0.75 * (b0 + len(batch)) / len(blocks), f"{b0 + len(batch)}/{len(blocks)} block(s)"
            )
    return out


@torch.no_grad()
def generate_targets_reference(
    baseline: Any, reinforced: Any, blocks: Sequence[TranslatedBlock], *, alpha: float
) -> list[BlockTargets]:
    """Straightforward version, as the paper's script: two full models, one block at a time,
    one position at a time. Kept to check that :func:`compute_targets` gives identical labels."""
    out = []
    for blk in blocks:
        dev_b = next(baseline.parameters()).device
        dev_r = next(reinforced.parameters()).device
        g_t = baseline(input_ids=torch.tensor([blk.translated_ids], device=dev_b)).logits[0].float().cpu()
        r_o = reinforced(input_ids=torch.tensor([blk.original_ids], device=dev_r)).logits[0].float().cpu()
        masked = set(blk.masked) | set(blk.unlabelled)
        labels: list[int] = []
        conf: list[float] = []
        for p in range(len(blk.original_ids)):
            if blk.mapping[p] < 0 or p in masked:
                labels.append(IGNORE)
                conf.append(math.nan)
                continue
            g = g_t[blk.mapping[p]].clone()
            mean = g.mean()
            for pos, tok in blk.used_first_tokens:
                if pos <= p:
                    g[tok] = mean
            for pos, tok in blk.suppressed:
                if pos == p:
                    g[tok] = SUPPRESSED
            r = r_o[p]
            v = g - alpha * torch.clamp(r - g, min=0)
            label = int(torch.argmax(v))
            labels.append(label)
            conf.append(float(torch.softmax(g, dim=0)[label]))
        out.append(BlockTargets(blk.doc, blk.index, list(blk.original_ids), labels, conf))
    return out


def block_stats(t: BlockTargets, mean_threshold: float, min_threshold: float) -> dict[str, Any]:
    vals = [c for c in t.confidence if not math.isnan(c)]
    mean = sum(vals) / len(vals) if vals else 1.0
    low = min(vals) if vals else 1.0
    return {
        "doc": t.doc,
        "index": t.index,
        "tokens": len(t.input_ids),
        "labelled": len(vals),
        "mean_confidence": round(mean, 6),
        "min_confidence": round(low, 6),
        "flagged": bool(vals) and (mean < mean_threshold or low < min_threshold),
    }


def save_targets(path: Path, targets: Sequence[BlockTargets]) -> None:
    from safetensors.torch import save_file

    offsets = [0]
    for t in targets:
        offsets.append(offsets[-1] + len(t.input_ids))
    tensors = {
        "input_ids": torch.tensor([i for t in targets for i in t.input_ids], dtype=torch.long),
        "labels": torch.tensor([i for t in targets for i in t.labels], dtype=torch.long),
        "confidence": torch.tensor([c for t in targets for c in t.confidence], dtype=torch.float32),
        "offsets": torch.tensor(offsets, dtype=torch.long),
        "docs": torch.tensor([t.doc for t in targets], dtype=torch.long),
    }
    soft = [t.soft_ids is not None for t in targets]
    if any(soft):
        if not all(soft):
            raise ValueError("soft labels for some blocks only")
        ids = [row for t in targets for row in t.soft_ids or []]
        probs = [row for t in targets for row in t.soft_probs or []]
        k = len(ids[0]) if ids else 1
        tensors["soft_ids"] = torch.tensor(ids, dtype=torch.int32).reshape(-1, k)
        tensors["soft_probs"] = torch.tensor(probs, dtype=torch.float32).reshape(-1, k)
    save_file(tensors, str(path))


def load_targets(path: Path) -> list[BlockTargets]:
    from safetensors.torch import load_file

    d = load_file(str(path))
    off = d["offsets"].tolist()
    out = [
        BlockTargets(
            doc=int(d["docs"][i]),
            index=i,
            input_ids=d["input_ids"][off[i] : off[i + 1]].tolist(),
            labels=d["labels"][off[i] : off[i + 1]].tolist(),
            confidence=d["confidence"][off[i] : off[i + 1]].tolist(),
        )
        for i in range(len(off) - 1)
    ]
    if "soft_ids" in d:
        row = 0
        for t in out:
            n = sum(1 for lab in t.labels if lab != IGNORE)
            t.soft_ids = d["soft_ids"][row : row + n].long().tolist()
            t.soft_probs = d["soft_probs"][row : row + n].tolist()
            row += n
        if row != d["soft_ids"].shape[0]:
            raise ValueError(f"{path}: {d['soft_ids'].shape[0]} soft rows for {row} labelled positions")
    return out


def soft_top_k(o: Any) -> int:
    """Soft labels' k for these options (0: hard labels)."""
    return o.whp_soft_top_k if o.whp_labels == "soft" else 0


def targets_input_hash(spec: ForgetSpec, reinforce_hash: str, anchors: Any) -> str:
    from .reinforce import corpus_hash

    o = spec.options
    payload: dict[str, Any] = {
        "stage": STAGE,
        "v": 3,  # 3: the artifact holds review.json (the target review, decoded)
        "reinforce": reinforce_hash,
        "anchors": [[a.term, a.kind, a.translations] for a in anchors.anchors],
        "corpus": corpus_hash(spec),
        "opts": [o.alpha, o.block_size, o.confidence_threshold, o.min_confidence_threshold],
        "rules": asdict(label_rules(o)),
    }
    if soft_top_k(o):  # hard labels keep their hash (their artifact is unchanged)
        payload["soft_top_k"] = soft_top_k(o)
    return hash_json(payload)


def targets_output(work_dir: Path | str) -> tuple[Path, str]:
    return stage_output(work_dir, DIR, STAGE, "targets")


def generate_targets(
    base_model_dir: Path | str,
    spec: ForgetSpec,
    work_dir: Path | str,
    *,
    deployed_adapter: Path | str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> StageResult:
    """Write ``work_dir/targets/``; skip if done for the same inputs (anchors.json edits count)."""
    from .anchors import load_anchors
    from .models import attach_adapter, load_baseline, load_tokenizer
    from .reinforce import reinforce_output
    from .review import target_review_items, write_target_review
    from .target_fixes import fixed_block, record_applied, reviewer_fixes
    from .translate import corpus_label_spans, corpus_texts, translate_corpus

    rep = Reporter(STAGE, progress, should_cancel)
    work = Path(work_dir)
    out = work / DIR
    adapter_dir, reinforce_hash = reinforce_output(work)
    anchors = load_anchors(work)
    base_hash = targets_input_hash(spec, reinforce_hash, anchors)
    # A target reviewer's fixed texts (target_fixes.py) change the targets of their blocks only.
    fixes = reviewer_fixes(work, base_hash)
    input_hash = hash_json({"targets": base_hash, "fixes": sorted(fixes.items())}) if fixes else base_hash
    if is_done(out, input_hash):
        rep(1.0, "targets already generated")
        return skipped_result(STAGE, out, input_hash)
    rep.check()
    o = spec.options
    tokenizer = load_tokenizer(base_model_dir)
    blocks = translate_corpus(
        tokenizer,
        corpus_texts(spec, tokenizer),
        anchors.anchors,
        o.block_size,
        rules=label_rules(o),
        label_spans=corpus_label_spans(spec, tokenizer),
    )
    rep(0.1, f"{len(blocks)} block(s) translated")
    fixes = {index: text for index, text in fixes.items() if index < len(blocks)}
    model = attach_adapter(load_baseline(base_model_dir, o, deployed_adapter), adapter_dir)
    previous = read_marker(out) or {}
    k = soft_top_k(o)
    targets: list[BlockTargets] = []
    if fixes and base_hash in (previous.get("input_hash"), (previous.get("summary") or {}).get("base_hash")):
        targets = load_targets(out / "targets.safetensors")  # only the fixed blocks change
        if len(targets) != len(blocks) or any((t.soft_ids is not None) != bool(k) for t in targets):
            targets = []  # not the artifact these blocks and options make: compute it all
    if not targets:
        targets = compute_targets(
            model,
            blocks,
            alpha=o.alpha,
            batch_size=o.batch_size,
            pad_id=tokenizer.pad_token_id,
            reporter=rep,
            soft_top_k=k,
        )
    if fixes:
        for index, text in fixes.items():
            blocks[index] = fixed_block(tokenizer, blocks[index], text)
        regenerated = compute_targets(
            model,
            [blocks[i] for i in fixes],
            alpha=o.alpha,
            batch_size=o.batch_size,
            pad_id=tokenizer.pad_token_id,
            soft_top_k=k,
        )
        for index, target in zip(fixes, regenerated, strict=True):
            targets[index] = target
        rep(0.95, f"{len(fixes)} block(s) regenerated from reviewers' fixes")
    stats = [block_stats(t, o.confidence_threshold, o.min_confidence_threshold) for t in targets]
    for s, b in zip(stats, blocks, strict=True):
        s["masked_repeats"] = len(b.masked)
        s["translation_index"] = b.translation_index
        if s["index"] in fixes:
            s["fixed"] = True  # a person wrote this block's generic text: not flagged again
            s["flagged"] = False
    flagged = [s["index"] for s in stats if s["flagged"]]
    labelled = sum(s["labelled"] for s in stats)
    mean_conf = sum(s["mean_confidence"] * s["labelled"] for s in stats) / max(1, labelled)
    changed = sum(
        1 for t in targets for p, lab in enumerate(t.labels[:-1]) if lab not in (IGNORE, t.input_ids[p + 1])
    )
    summary = {
        "blocks": len(targets),
        "labelled": labelled,
        "changed_labels": changed,
        "mean_confidence": round(mean_conf, 6),
        "flagged_blocks": flagged,
    }
    if k:
        summary["soft_top_k"] = k
    if fixes:
        summary.update(base_hash=base_hash, fixed_blocks=sorted(fixes))
    with atomic_dir(out, input_hash, summary) as tmp:
        save_targets(tmp / "targets.safetensors", targets)
        (tmp / "blocks.json").write_text(json.dumps({"blocks": stats, "flagged": flagged}, indent=2))
        # Decoded here, where the tokenizer is: API replicas only read it (review.py).
        items = target_review_items(tokenizer, blocks, targets, stats, flagged, o.confidence_threshold)
        write_target_review(tmp, items)
    if fixes:
        record_applied(work, list(fixes))
    log.info("targets: %d block(s), %d label(s), %d flagged", len(targets), labelled, len(flagged))
    rep(1.0, f"{len(flagged)} block(s) flagged for review")
    return StageResult(stage=STAGE, artifact=str(out), input_hash=input_hash, skipped=False, summary=summary)
