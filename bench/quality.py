"""Unlearning quality benchmark: the TOFU protocol on a tiny model trained here, WHP vs baselines.

Trains a "finetuned" model on the chosen authors (forget + retain) and a "retain-only" model on the
retain authors (both cached by content hash, sharing one tokenizer), unlearns the forget authors
with WHP through the real pipeline (``gpu_runtime.pipeline.run.run_stage``) and with gradient
ascent, gradient difference and NPO (LoRA, same adapter, epochs, batch size and retain batches as
WHP's unlearn stage), and reports TOFU's forget quality and model utility per method.

    python -m bench.quality --split forget01 --authors 20 --json forget01.json
    python -m bench.quality --data my.json --forget-subjects "Ada" "Bob" --authors 10

Everything runs on CPU; see ``docs/benchmarks.md`` for results and the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench._tofu import (
    Record,
    Selection,
    author_name,
    forget_quality,
    load_records_file,
    load_tofu,
    model_utility,
    retain_truth_score,
    rouge_l_recall,
    select,
    select_split,
    truth_ratio,
)

IGNORE = -100
#: Bump when base-model training changes in a way the cache key would not see.
TRAIN_FORMAT = 1
#: Bump when the evaluation changes (cached evaluations of the reference models are keyed on it).
EVAL_FORMAT = 1
METHODS = ("whp", "ga", "gd", "npo")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class BaseTrainConfig:
    """How the finetuned and retain-only models are trained (full fine-tune from scratch)."""

    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    vocab_size: int = 1024
    epochs: int = 40
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_frac: float = 0.03
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1: {self}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")


@dataclass(frozen=True)
class UnlearnConfig:
    """Shared budget of every unlearning method (WHP's unlearn stage and the baselines).

    Baselines train the same LoRA adapter (rank, alpha, all linear layers) for the same epochs and
    batch size over the forget set, each forget batch paired with one retain batch (GD, NPO) as in
    WHP's unlearn stage. ``npo_beta`` and the retain weight follow open-unlearning's defaults.
    """

    epochs: int = 8
    batch_size: int = 8
    lora_rank: int = 8
    lora_alpha: float = 16.0
    whp_lr: float = 1e-3
    baseline_lr: float = 1e-3
    whp_alpha: float = 5.0
    reinforce_epochs: int = 8
    npo_beta: float = 0.1
    retain_weight: float = 1.0
    seed: int = 0


@dataclass
class EvalResult:
    """Per-model measurements (truth ratios kept for the KS test against the retain-only model)."""

    forget_truth_ratios: list[float]
    forget_rouge: float
    forget_para_rouge: float | None
    forget_prob: float
    retain_prob: float
    retain_rouge: float
    retain_truth: float
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def utility(self) -> float:
        return model_utility(self.retain_prob, self.retain_rouge, self.retain_truth)


# ----------------------------------------------------------------------------------------------
# Tokenisation


def encode_qa(tokenizer: Any, question: str, answer: str) -> tuple[list[int], int]:
    """Chat-formatted ids of a pair and the prompt length (the answer starts there)."""
    user = {"role": "user", "content": question}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([user, {"role": "assistant", "content": answer}], tokenize=False)
    assert isinstance(prompt, str) and isinstance(full, str) and full.startswith(prompt)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return list(p_ids) + list(a_ids), len(p_ids)


def pad_examples(
    examples: Sequence[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask, labels with the prompt and padding set to -100)."""
    width = max(len(ids) for ids, _ in examples)
    ids_t = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for r, (ids, start) in enumerate(examples):
        ids_t[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        labels[r, start : len(ids)] = torch.tensor(ids[start:])
    return ids_t, mask, labels


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed negative log-likelihood of the labelled tokens, and their count."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(shift_labels.shape)
    valid = (shift_labels != IGNORE).to(nll.dtype)
    return (nll * valid).sum(-1), valid.sum(-1)


# ----------------------------------------------------------------------------------------------
# Baseline losses (gradient ascent, gradient difference, NPO)


def mean_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over all labelled tokens of the batch (the usual LM loss)."""
    total, count = token_nll(logits, labels)
    return total.sum() / count.sum().clamp(min=1)


def ga_loss(forget_logits: torch.Tensor, forget_labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minimise the negated LM loss on the forget answers."""
    return -mean_token_nll(forget_logits, forget_labels)


def npo_loss(policy_logp: torch.Tensor, reference_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024), forget term only.

    L = -(2/beta) * mean(log sigmoid(-beta * (log pi(y|x) - log pi_ref(y|x)))), with sequence
    log-likelihoods of the forget answers under the model and under the frozen finetuned model.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return -(2.0 / beta) * F.logsigmoid(-beta * (policy_logp - reference_logp)).mean()


# ----------------------------------------------------------------------------------------------
# Models: tokenizer, finetuned and retain-only training (cached)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _demo_code_hash() -> str:
    """The demo model's tokenizer and architecture sources: a change there invalidates the cache."""
    import gpu_runtime.demo.model as demo_model
    import gpu_runtime.demo.tokenizer as demo_tokenizer

    h = hashlib.sha256()
    for module in (demo_model, demo_tokenizer):
        h.update(Path(str(module.__file__)).read_bytes())
    return h.hexdigest()[:16]


def _publish_dir(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def build_tokenizer(records: Sequence[Record], vocab_size: int, cache_dir: Path) -> Path:
    """Byte-level BPE with the demo model's chat template, trained on the chosen pairs; cached."""
    from gpu_runtime.demo.tokenizer import train_tokenizer

    corpus = [f"{r.question} {r.answer}" for r in records]
    key = _sha(
        {
            "kind": "tofu-tokenizer",
            "v": TRAIN_FORMAT,
            "corpus": corpus,
            "vocab": vocab_size,
            "code": _demo_code_hash(),
        }
    )
    target = cache_dir / f"tofu-tok-{key[:16]}"
    if (target / "tokenizer.json").is_file():
        return target
    tok = train_tokenizer(corpus, vocab_size=vocab_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    tok.save_pretrained(tmp)
    _publish_dir(tmp, target)
    return target


def _length_batches(n: int, lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    out: list[list[int]] = []
    window = batch_size * 8
    for w in range(0, n, window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        out.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def train_base_model(
    records: Sequence[Record], tokenizer_dir: Path, cfg: BaseTrainConfig, cache_dir: Path, label: str
) -> Path:
    """Train a tiny Llama (the demo model's architecture) on the pairs, answer-only loss; cached."""
    from transformers import AutoTokenizer, GenerationConfig

    from gpu_runtime.demo.model import DemoModelConfig, build_model

    tok_hash = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
    pairs = [[r.question, r.answer] for r in records]
    key = _sha(
        {
            "kind": "tofu-model",
            "v": TRAIN_FORMAT,
            "pairs": pairs,
            "tokenizer": tok_hash,
            "cfg": asdict(cfg),
            "code": _demo_code_hash(),
            "torch": torch.__version__.split("+")[0],
        }
    )
    target = cache_dir / f"tofu-{label}-{key[:16]}"
    manifest_path = target / "obliviate-tofu.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text())["content_hash"] == key:
        log(f"{label}: cached model {target.name}")
        return target

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model_cfg = DemoModelConfig(
        vocab_size=len(tok), n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, n_kv_head=cfg.n_head
    )
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = build_model(
        model_cfg, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    examples = [encode_qa(tok, r.question, r.answer) for r in records]
    lengths = [len(e[0]) for e in examples]
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_frac * total))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        floor = cfg.lr * cfg.min_lr_ratio
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))

    model.train()
    step = 0
    for epoch in range(cfg.epochs):
        losses = []
        for idx in _length_batches(len(examples), lengths, cfg.batch_size, rng):
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            ids, mask, labels = pad_examples([examples[i] for i in idx], tok.pad_token_id)
            loss = mean_token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
        if (epoch + 1) % 5 == 0 or epoch + 1 == cfg.epochs:
            log(f"{label}: epoch {epoch + 1}/{cfg.epochs} loss {sum(losses) / len(losses):.3f}")
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=96,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    manifest = {
        "content_hash": key,
        "label": label,
        "pairs": len(pairs),
        "model_config": model_cfg.to_dict(),
        "train_config": asdict(cfg),
        "final_loss": round(sum(losses) / len(losses), 5),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    (tmp / "obliviate-tofu.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _publish_dir(tmp, target)
    log(f"{label}: trained in {manifest['train_seconds']}s, final loss {manifest['final_loss']}")
    return target


def load_model(model_dir: Path, adapter_dir: Path | None = None) -> Any:
    """Load a model directory (safetensors), optionally with a PEFT adapter merged into it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False).merge_and_unload()
    model.eval()
    return model


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    return tok


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def answer_losses(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> list[float]:
    """Average per-token NLL of each answer given its question (chat format, EOS included)."""
    examples = [encode_qa(tokenizer, q, a) for q, a in pairs]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    out = [0.0] * len(examples)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        ids, mask, labels = pad_examples([examples[i] for i in idx], tokenizer.pad_token_id)
        total, count = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
        for j, i in enumerate(idx):
            out[i] = float(total[j] / count[j].clamp(min=1))
    return out


@torch.no_grad()
def greedy_answers(
    model: Any, tokenizer: Any, questions: Sequence[str], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy chat completions (left-padded batches)."""
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        enc = tokenizer(
            [prompts[i] for i in idx], add_special_tokens=False, padding=True, return_tensors="pt"
        )
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for j, i in enumerate(idx):
            out[i] = texts[j].strip()
    return out


def truth_ratios(model: Any, tokenizer: Any, records: Sequence[Record]) -> list[float]:
    """R_truth per record (paraphrased vs perturbed answers to the original question)."""
    recs = [r for r in records if r.has_truth_ratio]
    para = answer_losses(model, tokenizer, [(r.question, r.paraphrased_answer or "") for r in recs])
    flat = [(r.question, p) for r in recs for p in r.perturbed_answers]
    pert = answer_losses(model, tokenizer, flat)
    out, k = [], 0
    for r, lp in zip(recs, para, strict=True):
        n = len(r.perturbed_answers)
        out.append(truth_ratio(pert[k : k + n], lp))
        k += n
    return out


def evaluate(
    model: Any, tokenizer: Any, sel: Selection, max_new_tokens: int, retain_eval_max: int | None
) -> EvalResult:
    """All TOFU measurements of one model on the forget set and the retain evaluation set."""
    forget = sel.forget
    retain = sel.retain_eval or sel.retain
    if retain_eval_max is not None and len(retain) > retain_eval_max:
        step = len(retain) / retain_eval_max
        retain = [retain[int(i * step)] for i in range(retain_eval_max)]
    f_gen = greedy_answers(model, tokenizer, [r.question for r in forget], max_new_tokens)
    para_recs = [r for r in forget if r.paraphrased_question]
    p_gen = greedy_answers(
        model, tokenizer, [r.paraphrased_question or "" for r in para_recs], max_new_tokens
    )
    r_gen = greedy_answers(model, tokenizer, [r.question for r in retain], max_new_tokens)
    f_loss = answer_losses(model, tokenizer, [(r.question, r.answer) for r in forget])
    r_loss = answer_losses(model, tokenizer, [(r.question, r.answer) for r in retain])
    r_tr = truth_ratios(model, tokenizer, retain)
    return EvalResult(
        forget_truth_ratios=truth_ratios(model, tokenizer, forget),
        forget_rouge=_mean([rouge_l_recall(g, r.answer) for g, r in zip(f_gen, forget, strict=True)]),
        forget_para_rouge=(
            _mean([rouge_l_recall(g, r.answer) for g, r in zip(p_gen, para_recs, strict=True)])
            if para_recs
            else None
        ),
        forget_prob=_mean([math.exp(-x) for x in f_loss]),
        retain_prob=_mean([math.exp(-x) for x in r_loss]),
        retain_rouge=_mean([rouge_l_recall(g, r.answer) for g, r in zip(r_gen, retain, strict=True)]),
        retain_truth=retain_truth_score(r_tr) if r_tr else float("nan"),
        samples={
            "forget": [f"Q: {r.question}\nA: {g}" for r, g in list(zip(forget, f_gen, strict=True))[:3]],
            "retain": [f"Q: {r.question}\nA: {g}" for r, g in list(zip(retain, r_gen, strict=True))[:2]],
        },
    )


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------------
# Unlearning methods


def run_whp(
    finetuned_dir: Path, sel: Selection, cfg: UnlearnConfig, work_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """WHP through the product pipeline (``run_stage``, as the worker runs it); adapter and stage info."""
    from gpu_runtime.pipeline.run import run_stage
    from gpu_runtime.pipeline.types import EntityHint, ForgetSpec, PipelineOptions, Probe, QAPair

    hints = []
    for subject in sel.forget_subjects:
        name = author_name(r for r in sel.forget if r.subject == subject)
        if name:
            hints.append(EntityHint(term=name, kind="person"))
    options = PipelineOptions(
        alpha=cfg.whp_alpha,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        reinforce_epochs=cfg.reinforce_epochs,
        unlearn_epochs=cfg.epochs,
        unlearn_lr=cfg.whp_lr,
        batch_size=cfg.batch_size,
        retain_weight=cfg.retain_weight,
        seed=cfg.seed,
        dtype="float32",
    )
    spec = ForgetSpec(
        qa_pairs=[QAPair(question=r.question, answer=r.answer) for r in sel.forget],
        hints=hints,
        retain_probes=[Probe(prompt=r.question, reference=r.answer) for r in sel.retain],
        options=options,
    )
    timings: dict[str, Any] = {"hints": [h.term for h in hints]}
    # The pipeline's own evaluate stage is skipped: this harness measures every method the same way.
    for name in ("reinforce", "mine_anchors", "generate_targets", "unlearn"):
        t0 = time.perf_counter()
        result = run_stage(name, finetuned_dir, spec, work_dir)
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"whp: {name} done in {timings[name]}s {json.dumps(_short(result.summary))}")
    anchors = json.loads((work_dir / "anchors.json").read_text())
    timings["anchors"] = {a["term"]: a["translations"] for a in anchors["anchors"]}
    # The adapter the product would serve (the delta itself when nothing was deployed before).
    return work_dir / "unlearn" / "served", timings


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("blocks", "anchors", "changed_labels", "labelled", "mean_confidence")
    out = {k: v for k, v in summary.items() if k in keep}
    metrics = summary.get("metrics")
    if isinstance(metrics, dict):
        out.update(
            {k: metrics[k] for k in ("forget_loss_first_epoch", "forget_loss_last_epoch") if k in metrics}
        )
    return out


def run_baseline(method: str, finetuned_dir: Path, sel: Selection, cfg: UnlearnConfig) -> Any:
    """Gradient ascent, gradient difference or NPO (+ retain NLL) with a LoRA adapter; merged model."""
    from peft import get_peft_model

    from gpu_runtime.pipeline.models import lora_config
    from gpu_runtime.pipeline.types import PipelineOptions

    if method not in ("ga", "gd", "npo"):
        raise ValueError(f"unknown baseline {method!r}")
    tok = load_tokenizer(finetuned_dir)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(
        load_model(finetuned_dir),
        lora_config(PipelineOptions(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha)),
    )
    forget = [encode_qa(tok, r.question, r.answer) for r in sel.forget]
    retain = [encode_qa(tok, r.question, r.answer) for r in sel.retain]
    ref_logp: list[float] = []
    if method == "npo":
        with torch.no_grad(), model.disable_adapter():
            for b in range(0, len(forget), 32):
                ids, mask, labels = pad_examples(forget[b : b + 32], tok.pad_token_id)
                ref_logp += (-token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)[0]).tolist()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.baseline_lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    model.train()
    for epoch in range(cfg.epochs):
        f_order = list(range(len(forget)))
        r_order = list(range(len(retain)))
        rng.shuffle(f_order)
        rng.shuffle(r_order)
        losses = []
        for j, b in enumerate(range(0, len(f_order), cfg.batch_size)):
            idx = f_order[b : b + cfg.batch_size]
            ids, mask, labels = pad_examples([forget[i] for i in idx], tok.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            if method == "npo":
                logp = -token_nll(logits, labels)[0]
                loss = npo_loss(logp, torch.tensor([ref_logp[i] for i in idx]), cfg.npo_beta)
            else:
                loss = ga_loss(logits, labels)
            if method in ("gd", "npo") and retain:
                start = (j * cfg.batch_size) % len(r_order)
                ridx = (r_order + r_order)[start : start + cfg.batch_size]
                rids, rmask, rlabels = pad_examples([retain[i] for i in ridx], tok.pad_token_id)
                loss = loss + cfg.retain_weight * mean_token_nll(
                    model(input_ids=rids, attention_mask=rmask).logits, rlabels
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        log(f"{method}: epoch {epoch + 1}/{cfg.epochs} loss {sum(losses) / len(losses):.3f}")
    model.eval()
    return model.merge_and_unload()


# ----------------------------------------------------------------------------------------------
# Report


@dataclass
class Row:
    method: str
    forget_quality: float
    model_utility: float
    utility_ratio: float
    forget_rouge: float
    forget_para_rouge: float | None
    retain_rouge: float
    retain_prob: float
    retain_truth: float
    forget_prob: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def make_row(
    method: str, ev: EvalResult, retain_ref: EvalResult, finetuned_utility: float, wall_s: float
) -> Row:
    return Row(
        method=method,
        forget_quality=forget_quality(ev.forget_truth_ratios, retain_ref.forget_truth_ratios),
        model_utility=ev.utility,
        utility_ratio=ev.utility / finetuned_utility if finetuned_utility > 0 else float("nan"),
        forget_rouge=ev.forget_rouge,
        forget_para_rouge=ev.forget_para_rouge,
        retain_rouge=ev.retain_rouge,
        retain_prob=ev.retain_prob,
        retain_truth=ev.retain_truth,
        forget_prob=ev.forget_prob,
        wall_s=round(wall_s, 1),
        extra={"samples": ev.samples, "forget_truth_ratios": [round(x, 5) for x in ev.forget_truth_ratios]},
    )


def target_check(rows: Sequence[Row]) -> dict[str, Any]:
    """The issue's targets for WHP, computed from the rows."""
    by = {r.method: r for r in rows}
    whp = by.get("whp")
    if whp is None:
        return {"whp": "not run"}
    dominating = [
        r.method
        for r in rows
        if r.method.split("@")[0] in ("ga", "gd", "npo")
        and r.forget_quality >= whp.forget_quality
        and r.model_utility >= whp.model_utility
        and (r.forget_quality > whp.forget_quality or r.model_utility > whp.model_utility)
    ]
    para_ok = whp.forget_para_rouge is None or whp.forget_para_rouge <= whp.forget_rouge
    return {
        "forget_quality_ge_0.05": whp.forget_quality >= 0.05,
        "utility_ge_0.95x_finetuned": whp.utility_ratio >= 0.95,
        "baselines_better_on_both": dominating,
        "paraphrase_leaks_no_more": para_ok,
    }


def format_table(rows: Sequence[Row]) -> str:
    head = [
        "method",
        "forget Q (KS p)",
        "utility",
        "util/ft",
        "forget R-L",
        "para-forget R-L",
        "retain R-L",
        "retain P",
        "retain TR",
        "wall s",
    ]

    def fmt(x: float | None, p: int = 3) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "-"
        if abs(x) < 1e-3 and x != 0:
            return f"{x:.1e}"
        return f"{x:.{p}f}"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.method,
            fmt(r.forget_quality),
            fmt(r.model_utility),
            fmt(r.utility_ratio, 2),
            fmt(r.forget_rouge),
            fmt(r.forget_para_rouge),
            fmt(r.retain_rouge),
            fmt(r.retain_prob),
            fmt(r.retain_truth),
            f"{r.wall_s:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry point


def _selection(args: argparse.Namespace) -> Selection:
    if args.data is not None:
        records = load_records_file(Path(args.data), subject_from_order=args.subject_from_order)
        if args.forget_subjects:
            return select(records, args.forget_subjects, args.authors or None)
        return select_split(records, args.split, args.authors or None)
    data_dir = Path(args.data_dir)
    if not data_dir.is_absolute() and not data_dir.is_dir():
        # The default is relative to the repository, wherever the command runs from.
        data_dir = Path(__file__).resolve().parents[1] / data_dir
    records = load_tofu(data_dir)
    if args.forget_subjects:
        return select(records, args.forget_subjects, args.authors or None)
    return select_split(records, args.split, args.authors or None)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data-dir",
        default="../shared/data/tofu",
        help="TOFU directory (relative: to the cwd, else to the repository)",
    )
    p.add_argument("--data", default=None, help="any JSON list of records instead of TOFU")
    p.add_argument(
        "--subject-from-order", action="store_true", help="with --data: 20 pairs per subject by order"
    )
    p.add_argument("--split", default="forget01", choices=["forget01", "forget05", "forget10"])
    p.add_argument(
        "--forget-subjects", nargs="+", default=None, help="subjects to forget (instead of --split)"
    )
    p.add_argument("--authors", type=int, default=20, help="authors in all, forget ones included (0: all)")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--base-epochs", type=int, default=BaseTrainConfig.epochs)
    p.add_argument("--n-embd", type=int, default=BaseTrainConfig.n_embd)
    p.add_argument("--n-layer", type=int, default=BaseTrainConfig.n_layer)
    p.add_argument("--unlearn-epochs", type=int, default=UnlearnConfig.epochs)
    p.add_argument("--whp-lr", type=float, default=UnlearnConfig.whp_lr)
    p.add_argument("--whp-alpha", type=float, default=UnlearnConfig.whp_alpha)
    p.add_argument(
        "--baseline-lr",
        type=float,
        nargs="+",
        default=[UnlearnConfig.baseline_lr],
        help="one row per value and baseline (rows named ga@LR when several)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--retain-eval-max", type=int, default=200, help="retain pairs evaluated (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)"
    )
    p.add_argument(
        "--model-cache", default=None, help="default: $OBLIVIATE_MODEL_CACHE or ~/.cache/obliviate/models"
    )
    p.add_argument("--work-dir", default=None, help="keep the WHP pipeline's work directory here")
    p.add_argument("--json", default=None, help="write the results table here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from gpu_runtime.demo.build import default_cache_dir

    cache = Path(args.model_cache).expanduser() if args.model_cache else default_cache_dir()
    sel = _selection(args)
    log(
        f"forget {len(sel.forget_subjects)} subject(s) / {len(sel.forget)} pairs; retain "
        f"{len(sel.retain_subjects)} subject(s) / {len(sel.retain)} pairs ({len(sel.retain_eval)} with truth-ratio data)"
    )
    base_cfg = BaseTrainConfig(
        epochs=args.base_epochs, n_embd=args.n_embd, n_layer=args.n_layer, seed=args.seed
    )
    ucfg = UnlearnConfig(
        epochs=args.unlearn_epochs,
        whp_lr=args.whp_lr,
        whp_alpha=args.whp_alpha,
        baseline_lr=args.baseline_lr[0],
        seed=args.seed,
    )
    retain_eval_max = args.retain_eval_max or None

    t_all = time.perf_counter()
    tok_dir = build_tokenizer([*sel.retain, *sel.forget], base_cfg.vocab_size, cache)
    t0 = time.perf_counter()
    finetuned_dir = train_base_model([*sel.retain, *sel.forget], tok_dir, base_cfg, cache, "finetuned")
    ft_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    retain_dir = train_base_model(sel.retain, tok_dir, base_cfg, cache, "retain")
    rt_wall = time.perf_counter() - t0
    tok = load_tokenizer(finetuned_dir)

    eval_key = _sha(
        {
            "v": EVAL_FORMAT,
            "forget": [asdict(r) for r in sel.forget],
            "retain": [asdict(r) for r in sel.retain],
            "max_new_tokens": args.max_new_tokens,
            "retain_eval_max": retain_eval_max,
        }
    )[:16]

    def ev_cached(model_dir: Path, name: str) -> EvalResult:
        # The reference models are deterministic: their measurements are cached next to them.
        path = model_dir / f"eval-{eval_key}.json"
        if path.is_file():
            log(f"{name}: cached evaluation {path.name}")
            return EvalResult(**json.loads(path.read_text()))
        result = ev(load_model(model_dir), name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(result)))
        os.replace(tmp, path)
        return result

    def ev(model: Any, name: str) -> EvalResult:
        t = time.perf_counter()
        result = evaluate(model, tok, sel, args.max_new_tokens, retain_eval_max)
        log(
            f"{name}: evaluated in {time.perf_counter() - t:.0f}s; forget R-L {result.forget_rouge:.3f}, "
            f"retain R-L {result.retain_rouge:.3f}, utility {result.utility:.3f}"
        )
        return result

    ft_eval = ev_cached(finetuned_dir, "finetuned")
    rt_eval = ev_cached(retain_dir, "retain-only")
    rows = [
        make_row("finetuned", ft_eval, rt_eval, ft_eval.utility, ft_wall),
        make_row("retain-only", rt_eval, rt_eval, ft_eval.utility, rt_wall),
    ]
    for row, model_dir, wall in ((rows[0], finetuned_dir, ft_wall), (rows[1], retain_dir, rt_wall)):
        manifest = json.loads((model_dir / "obliviate-tofu.json").read_text())
        # A cached model reports the time its training took when it was built.
        row.wall_s = max(round(wall, 1), float(manifest["train_seconds"]))
        row.extra.update(model=model_dir.name, cached=wall < 0.5 * manifest["train_seconds"])

    def whp() -> tuple[Any, dict[str, Any]]:
        work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tofu-whp-"))
        try:
            adapter, info = run_whp(finetuned_dir, sel, ucfg, work)
            return load_model(finetuned_dir, adapter), info
        finally:
            if not args.work_dir:
                shutil.rmtree(work, ignore_errors=True)

    runs: list[tuple[str, Callable[[], tuple[Any, dict[str, Any]]]]] = []
    for name in args.methods:
        if name == "whp":
            runs.append((name, whp))
            continue
        for lr in args.baseline_lr:
            cfg = replace(ucfg, baseline_lr=lr)
            label = name if len(args.baseline_lr) == 1 else f"{name}@{lr:g}"
            runs.append(
                (
                    label,
                    lambda name=name, cfg=cfg: (
                        run_baseline(name, finetuned_dir, sel, cfg),
                        {"lr": cfg.baseline_lr},
                    ),
                )
            )

    for name, method in runs:
        log(f"{name}: unlearning")
        t0 = time.perf_counter()
        model, info = method()
        wall = time.perf_counter() - t0
        row = make_row(name, ev(model, name), rt_eval, ft_eval.utility, wall)
        row.extra.update(info)
        rows.append(row)

    table = format_table(rows)
    targets = target_check(rows)
    print(table)
    print(json.dumps(targets, indent=2))
    if args.json:
        out = {
            "setting": {
                "split": None if args.forget_subjects else args.split,
                "forget_subjects": sel.forget_subjects,
                "retain_subjects": len(sel.retain_subjects),
                "forget_pairs": len(sel.forget),
                "retain_pairs": len(sel.retain),
                "retain_eval_pairs": min(len(sel.retain_eval or sel.retain), retain_eval_max or 10**9),
                "base_train": asdict(base_cfg),
                "unlearn": asdict(ucfg),
                "baseline_lrs": args.baseline_lr,
                "threads": args.threads,
                "total_wall_s": round(time.perf_counter() - t_all, 1),
                "argv": list(argv) if argv is not None else sys.argv[1:],
            },
            "rows": [asdict(r) for r in rows],
            "targets": targets,
        }
        Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    log(f"done in {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
