"""Unlearning quality benchmark: the TOFU protocol on tiny models trained here, a fair table.

One finetuned model learns every author of the run (``--authors``, default 40: TOFU's forget10
authors + retain authors with truth-ratio data; see ``bench._tofu.AuthorPlan``); a retain-only model
per split learns all but the split's forget authors (both cached by content and code hash, sharing
one tokenizer). Methods: GA, GradDiff (``gd``), NPO and SimNPO baselines (LoRA, as in
open-unlearning), WHP (``method: whp``) and the pipeline's default (``combined``), the last two
through the real pipeline (``gpu_runtime.pipeline.run.run_stage``).

Every method is tuned on a validation split whose forget authors no test split contains
(``GRIDS``, ``CHOICE_RULE``); the test splits only run the chosen configurations, over seeds:

    python -m bench.quality --split validation --json val.json
    python -m bench.quality --split forget01 --tuned val.json --seeds 0 1 2 --json f01.json --plot docs/tofu-forget01.svg

Rows are cached under the model cache (``tofu-runs/``), keyed on the data, the configuration, the
reference models and the source of this file, ``bench/_tofu.py`` and ``gpu_runtime/pipeline``: a
code change never reuses a stale number. Everything runs on CPU; see ``docs/benchmarks.md``.
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench._tofu import (
    VALIDATION,
    Record,
    Selection,
    author_name,
    forget_quality,
    load_records_file,
    load_tofu,
    model_utility,
    plan_authors,
    plan_selection,
    retain_truth_score,
    rouge_l_recall,
    truth_ratio,
)

IGNORE = -100
#: Bump when base-model training changes in a way the cache key would not see.
TRAIN_FORMAT = 1
#: Bump when the evaluation changes (cached evaluations of the reference models are keyed on it).
EVAL_FORMAT = 1
METHODS = ("ga", "gd", "npo", "simnpo", "whp", "combined")
BASELINES = ("ga", "gd", "npo", "simnpo")
#: The pipeline's default method (``PipelineOptions.method``): the one the targets are about.
DEFAULT_METHOD = "combined"


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
    """One unlearning run: the method's hyper-parameters and the budget shared by all methods.

    Every method trains the same LoRA adapter (rank, alpha, all linear layers: the pipeline's
    ``lora_config``) with the same batch size; a forget batch is paired with one retain batch (GD,
    NPO, SimNPO; WHP and combined use the pipeline's own retain term). ``epochs``, ``lr`` and
    ``beta`` (NPO / SimNPO inverse temperature, combined's NPO term) and ``whp_alpha`` are tuned per
    method on the validation split (``GRIDS``); ``seed`` sets the adapter's initialisation and the
    batch order (the reference models are trained once, with seed 0).
    """

    method: str = "combined"
    epochs: int = 20
    lr: float = 1e-3
    beta: float = 0.1
    whp_alpha: float = 5.0
    npo_weight: float = 1.0
    batch_size: int = 8
    lora_rank: int = 8
    lora_alpha: float = 16.0
    reinforce_epochs: int = 8
    retain_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.epochs < 1 or self.lr <= 0 or self.beta <= 0:
            raise ValueError(f"epochs, lr and beta must be positive: {self}")

    def label(self) -> str:
        """The hyper-parameters that the grids vary, e.g. ``npo lr=0.001 beta=0.1 ep=20``."""
        parts = [self.method, f"lr={self.lr:g}", f"ep={self.epochs}"]
        if self.method in ("npo", "simnpo", "combined"):
            parts.append(f"beta={self.beta:g}")
        if self.method == "combined" and self.npo_weight != 1.0:
            parts.append(f"npo_w={self.npo_weight:g}")
        if self.method == "whp":
            parts.append(f"alpha={self.whp_alpha:g}")
        return " ".join(parts)


#: The validation grid of every method (tuned on the validation split only; see ``choose``).
#: Baselines: the learning rate (and NPO/SimNPO's beta) over the pipeline's 20-epoch budget;
#: whp: the paper set-up (8 epochs) with alpha and lr; combined: the pipeline's defaults (20 epochs,
#: lr 3e-3, beta 0.1), a lower beta (the direction the calibration in forgetting.md points to) and a
#: lower lr (its utility was under the floor at both lr 3e-3 points).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "ga": [{"lr": 2e-4}, {"lr": 5e-4}],
    "gd": [{"lr": 5e-4}, {"lr": 1e-3}],
    "npo": [{"lr": 1e-3, "beta": 0.1}, {"lr": 3e-3, "beta": 0.03}],
    "simnpo": [{"lr": 1e-3, "beta": 2.5}, {"lr": 3e-3, "beta": 2.5}],
    "whp": [{"epochs": 8, "lr": 1e-3, "whp_alpha": 5.0}, {"epochs": 8, "lr": 1e-3, "whp_alpha": 10.0}],
    "combined": [
        {"epochs": 20, "lr": 3e-3, "beta": 0.1},
        {"epochs": 20, "lr": 3e-3, "beta": 0.03},
        {"epochs": 20, "lr": 1e-3, "beta": 0.1},
    ],
}
#: The fixed rule that picks one configuration per method on the validation split.
UTILITY_FLOOR = 0.95
CHOICE_RULE = (
    f"highest forget quality among configurations with utility >= {UTILITY_FLOOR} x finetuned "
    "(ties: higher utility); if none reaches the floor, the highest utility"
)


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
    #: Share of greedy forget answers that ``gpu_runtime.pipeline.fluency.assess`` flags as broken.
    forget_broken: float = float("nan")

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


def source_hash(sources: Sequence[str | bytes]) -> str:
    """SHA-256 (16 hex digits) of source texts: the code part of every cache key."""
    h = hashlib.sha256()
    for src in sources:
        data = src.encode() if isinstance(src, str) else src
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def _module_sources(*modules: Any) -> list[bytes]:
    return [Path(str(m.__file__)).read_bytes() for m in modules]


@lru_cache(maxsize=1)
def train_code_hash() -> str:
    """The code that trains the reference models: the demo model's tokenizer and architecture
    modules and this file's training functions. A change there invalidates the cached models.

    Computed once per process (``main`` calls it first): ``inspect.getsource`` reads the file on
    disk, so a process that outlives an edit of this file would otherwise hash the wrong lines.
    """
    import inspect

    import gpu_runtime.demo.model as demo_model
    import gpu_runtime.demo.tokenizer as demo_tokenizer

    funcs = (
        encode_qa,
        pad_examples,
        token_nll,
        mean_token_nll,
        _length_batches,
        build_tokenizer,
        train_base_model,
    )
    return source_hash(
        [
            *_module_sources(demo_model, demo_tokenizer),
            *(inspect.getsource(f) for f in funcs),
            str(TRAIN_FORMAT),
        ]
    )


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
            "code": train_code_hash(),
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
            "code": train_code_hash(),
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


def broken_rate(answers: Sequence[str], vocabulary: set[str]) -> float:
    """Share of ``answers`` that the pipeline's fluency check (text checks: repetition, non-words,
    empty; no perplexity) flags as broken; ``vocabulary``: words of the corpus and the prompts."""
    from gpu_runtime.pipeline.fluency import assess

    if not answers:
        return float("nan")
    return sum(assess(a, vocabulary).broken for a in answers) / len(answers)


def utility_pairs(sel: Selection, retain_eval_max: int | None) -> list[Record]:
    """The retain pairs model utility is measured on (evenly spaced, at most ``retain_eval_max``)."""
    retain = sel.retain_eval or sel.retain
    if retain_eval_max is not None and len(retain) > retain_eval_max:
        step = len(retain) / retain_eval_max
        retain = [retain[int(i * step)] for i in range(retain_eval_max)]
    return retain


def evaluate(
    model: Any, tokenizer: Any, sel: Selection, max_new_tokens: int, retain_eval_max: int | None
) -> EvalResult:
    """All TOFU measurements of one model on the forget set and the retain evaluation set."""
    from gpu_runtime.pipeline.fluency import vocabulary_of

    forget = sel.forget
    retain = utility_pairs(sel, retain_eval_max)
    f_gen = greedy_answers(model, tokenizer, [r.question for r in forget], max_new_tokens)
    para_recs = [r for r in forget if r.paraphrased_question]
    p_gen = greedy_answers(
        model, tokenizer, [r.paraphrased_question or "" for r in para_recs], max_new_tokens
    )
    r_gen = greedy_answers(model, tokenizer, [r.question for r in retain], max_new_tokens)
    f_loss = answer_losses(model, tokenizer, [(r.question, r.answer) for r in forget])
    r_loss = answer_losses(model, tokenizer, [(r.question, r.answer) for r in retain])
    r_tr = truth_ratios(model, tokenizer, retain)
    vocabulary = vocabulary_of(t for r in sel.trained for t in (r.question, r.answer))
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
            "forget": [f"Q: {r.question}\nA: {g}" for r, g in list(zip(forget, f_gen, strict=True))[:4]],
            "retain": [f"Q: {r.question}\nA: {g}" for r, g in list(zip(retain, r_gen, strict=True))[:2]],
        },
        forget_broken=broken_rate(f_gen, vocabulary),
    )


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------------
# Unlearning methods


def run_pipeline_method(
    finetuned_dir: Path, sel: Selection, cfg: UnlearnConfig, work_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """``whp`` or ``combined`` through the product pipeline (``run_stage``, as the worker runs it).

    The author names (guessed from the answers) are the entity hints a requester would give; the
    retain authors' pairs are the retain probes. Returns the adapter the product would serve and
    per-stage timings.
    """
    from gpu_runtime.pipeline.run import run_stage
    from gpu_runtime.pipeline.types import EntityHint, ForgetSpec, PipelineOptions, Probe, QAPair

    if cfg.method not in ("whp", "combined"):
        raise ValueError(f"not a pipeline method: {cfg.method!r}")
    hints = []
    for subject in sel.forget_subjects:
        name = author_name(r for r in sel.forget if r.subject == subject)
        if name:
            hints.append(EntityHint(term=name, kind="person"))
    options = PipelineOptions(
        method=cfg.method,
        alpha=cfg.whp_alpha,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        reinforce_epochs=cfg.reinforce_epochs,
        unlearn_epochs=cfg.epochs,
        unlearn_lr=cfg.lr,
        npo_beta=cfg.beta,
        npo_weight=cfg.npo_weight,
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
        log(f"{cfg.method}: {name} done in {timings[name]}s {json.dumps(_short(result.summary))}")
    anchors = json.loads((work_dir / "anchors.json").read_text())
    timings["anchors"] = len(anchors["anchors"])
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


def simnpo_loss(policy_logp: torch.Tensor, n_tokens: torch.Tensor, beta: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024), forget term: reference-free and length-normalised,
    -(2/beta) * mean(log sigmoid(-beta * log pi(y|x) / |y|)) (margin 0), through the pipeline's
    ``objective.npo_loss`` (its ``simnpo`` variant)."""
    from gpu_runtime.pipeline.objective import npo_loss as pipeline_npo_loss

    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return pipeline_npo_loss(policy_logp, n_tokens, None, beta, "simnpo")


def run_baseline(finetuned_dir: Path, sel: Selection, cfg: UnlearnConfig) -> Any:
    """GA, GD, NPO or SimNPO (the last three + retain NLL) with a LoRA adapter; the merged model."""
    from peft import get_peft_model

    from gpu_runtime.pipeline.models import lora_config
    from gpu_runtime.pipeline.types import PipelineOptions

    method = cfg.method
    if method not in BASELINES:
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
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
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
                loss = npo_loss(logp, torch.tensor([ref_logp[i] for i in idx]), cfg.beta)
            elif method == "simnpo":
                total, count = token_nll(logits, labels)
                loss = simnpo_loss(-total, count, cfg.beta)
            else:
                loss = ga_loss(logits, labels)
            if method != "ga" and retain:
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
        if (epoch + 1) % 5 == 0 or epoch + 1 == cfg.epochs:
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
    #: Share of broken forget answers (``broken_rate``).
    forget_broken: float = float("nan")


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
        forget_broken=ev.forget_broken,
    )


_METRICS = (
    "forget_quality",
    "model_utility",
    "utility_ratio",
    "forget_broken",
    "forget_rouge",
    "forget_para_rouge",
    "retain_rouge",
    "retain_prob",
    "retain_truth",
    "forget_prob",
    "wall_s",
)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(rows: Sequence[Row]) -> list[Row]:
    """One row per method (in first-seen order): the mean over its seeds, the spread in
    ``extra["spread"]`` (mean, std, min, max, n per metric) and the seeds in ``extra["seeds"]``."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.method, []).append(r)
    out = []
    for method, rs in groups.items():
        stats: dict[str, dict[str, float]] = {}
        for m in _METRICS:
            vals = [float(getattr(r, m)) for r in rs if getattr(r, m) is not None]
            vals = [v for v in vals if not math.isnan(v)]
            if vals:
                stats[m] = spread(vals)

        def mean(m: str, stats: dict[str, dict[str, float]] = stats) -> float:
            return stats[m]["mean"] if m in stats else float("nan")

        out.append(
            Row(
                method=method,
                forget_quality=mean("forget_quality"),
                model_utility=mean("model_utility"),
                utility_ratio=mean("utility_ratio"),
                forget_rouge=mean("forget_rouge"),
                forget_para_rouge=stats["forget_para_rouge"]["mean"]
                if "forget_para_rouge" in stats
                else None,
                retain_rouge=mean("retain_rouge"),
                retain_prob=mean("retain_prob"),
                retain_truth=mean("retain_truth"),
                forget_prob=mean("forget_prob"),
                wall_s=mean("wall_s"),
                extra={
                    "spread": stats,
                    "seeds": [r.extra.get("seed") for r in rs],
                    "config": rs[0].extra.get("config"),
                },
                forget_broken=mean("forget_broken"),
            )
        )
    return out


def dominates(a: Row, b: Row) -> bool:
    """``a`` is at least as good as ``b`` on forget quality and utility, and better on one."""
    return (
        a.forget_quality >= b.forget_quality
        and a.model_utility >= b.model_utility
        and (a.forget_quality > b.forget_quality or a.model_utility > b.model_utility)
    )


def target_check(rows: Sequence[Row], method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """The issue's targets for ``method`` (default: the pipeline's default), from the rows."""
    by = {r.method: r for r in rows}
    row = by.get(method)
    if row is None:
        return {method: "not run"}
    others = [
        r.method for r in rows if r.method not in (method, "finetuned", "retain-only") and dominates(r, row)
    ]
    para_ok = row.forget_para_rouge is None or row.forget_para_rouge <= row.forget_rouge
    return {
        "method": method,
        "forget_quality_ge_0.05": row.forget_quality >= 0.05,
        "utility_ge_0.95x_finetuned": row.utility_ratio >= 0.95,
        "broken_le_5pct": (not math.isnan(row.forget_broken)) and row.forget_broken <= 0.05,
        "baselines_better_on_both": others,
        "paraphrase_leaks_no_more": para_ok,
    }


def choose(rows: Sequence[Row], floor: float = UTILITY_FLOOR) -> int:
    """Index of the configuration that ``CHOICE_RULE`` picks (validation rows of one method)."""
    if not rows:
        raise ValueError("nothing to choose from")
    ok = [i for i, r in enumerate(rows) if r.utility_ratio >= floor]
    if ok:
        return max(ok, key=lambda i: (rows[i].forget_quality, rows[i].model_utility))
    return max(range(len(rows)), key=lambda i: (rows[i].model_utility, rows[i].forget_quality))


def _fmt(x: float | None, p: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) < 1e-3 and x != 0:
        return f"{x:.1e}"
    return f"{x:.{p}f}"


def format_table(rows: Sequence[Row]) -> str:
    """Markdown table; a metric with a spread over seeds reads ``mean ± std (min–max)``."""
    head = [
        "method",
        "forget Q (KS p)",
        "utility",
        "util/ft",
        "broken",
        "forget R-L",
        "para-forget R-L",
        "retain R-L",
        "retain P",
        "retain TR",
        "wall s",
    ]

    def cell(r: Row, m: str, p: int = 3) -> str:
        value = getattr(r, m)
        st = r.extra.get("spread", {}).get(m)
        if st is None or st["n"] < 2:
            return _fmt(value, p)
        if m == "forget_quality":
            return f"{_fmt(st['mean'], p)} ({_fmt(st['min'], p)}–{_fmt(st['max'], p)})"
        return f"{_fmt(st['mean'], p)} ± {_fmt(st['std'], p)}"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.method,
            cell(r, "forget_quality"),
            cell(r, "model_utility"),
            cell(r, "utility_ratio", 2),
            cell(r, "forget_broken", 2),
            cell(r, "forget_rouge"),
            cell(r, "forget_para_rouge"),
            cell(r, "retain_rouge"),
            cell(r, "retain_prob"),
            cell(r, "retain_truth"),
            f"{r.wall_s:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pareto(rows: Sequence[Row], refs: Sequence[Row], path: Path, title: str) -> None:
    """Forget quality (log x) against model utility, one point per method with its min–max over
    seeds as error bars; the reference models and the targets (0.05, 0.95x finetuned) as guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "obliviate-tofu"  # stable ids: the SVG diffs cleanly
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ft = next((r for r in refs if r.method == "finetuned"), None)
    floor = 1e-30
    for r in refs:
        ax.scatter([max(r.forget_quality, floor)], [r.model_utility], marker="s", color="grey", zorder=3)
        ax.annotate(
            r.method,
            (max(r.forget_quality, floor), r.model_utility),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
            color="grey",
        )
    markers = "o^vD*Ps"
    for k, r in enumerate(rows):
        st = r.extra.get("spread", {})
        x, y = max(r.forget_quality, floor), r.model_utility
        fq, mu = st.get("forget_quality"), st.get("model_utility")
        xerr = [[x - max(fq["min"], floor)], [max(fq["max"], floor) - x]] if fq else None
        yerr = [[y - mu["min"]], [mu["max"] - y]] if mu else None
        ax.errorbar(
            [x], [y], xerr=xerr, yerr=yerr, fmt=markers[k % len(markers)], capsize=3, label=r.method, zorder=4
        )
    ax.set_xscale("log")
    ax.axvline(0.05, color="tab:red", linestyle=":", linewidth=1, label="forget Q 0.05")
    if ft is not None:
        ax.axhline(
            UTILITY_FLOOR * ft.model_utility,
            color="tab:blue",
            linestyle=":",
            linewidth=1,
            label="0.95x finetuned utility",
        )
    ax.set_xlabel("forget quality (KS p-value, log)")
    ax.set_ylabel("model utility")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Cache keys: data, configuration and the code that produced a number


def code_files(root: Path) -> list[Path]:
    """The sources a method row depends on: this file, ``bench/_tofu.py``, every module of
    ``gpu_runtime/pipeline`` (WHP, combined, the NPO/SimNPO losses, LoRA, fluency, ROUGE) and the
    demo model's code."""
    return [
        root / "bench" / "quality.py",
        root / "bench" / "_tofu.py",
        *sorted((root / "gpu_runtime" / "pipeline").glob("*.py")),
        root / "gpu_runtime" / "demo" / "model.py",
        root / "gpu_runtime" / "demo" / "tokenizer.py",
    ]


def files_hash(root: Path, files: Sequence[Path]) -> str:
    """``source_hash`` of the files' paths (relative to ``root``) and contents."""
    return source_hash([f"{f.relative_to(root)}\n".encode() + f.read_bytes() for f in files])


@lru_cache(maxsize=1)
def run_code_hash() -> str:
    """``files_hash`` of ``code_files`` in this checkout, computed once per process from the files
    as they are when the run starts."""
    root = Path(__file__).resolve().parents[1]
    return files_hash(root, code_files(root))


@lru_cache(maxsize=1)
def eval_code_hash() -> str:
    """The code of the measurements (cached evaluations of the reference models are keyed on it);
    computed once per process, like ``train_code_hash``."""
    import inspect

    import bench._tofu as tofu
    import gpu_runtime.pipeline.fluency as fluency
    import gpu_runtime.pipeline.leaks as leaks

    funcs = (evaluate, utility_pairs, broken_rate, answer_losses, greedy_answers, truth_ratios, encode_qa)
    return source_hash(
        [
            *_module_sources(tofu, leaks, fluency),
            *(inspect.getsource(f) for f in (*funcs, pad_examples, token_nll)),
            inspect.getsource(EvalResult),
            str(EVAL_FORMAT),
        ]
    )


def run_key(
    split: str,
    sel: Selection,
    cfg: UnlearnConfig,
    finetuned_dir: Path,
    retain_dir: Path,
    eval_args: dict[str, Any],
) -> str:
    """Cache key of one method row: data, configuration, reference models, evaluation, code."""
    return _sha(
        {
            "kind": "tofu-run",
            "split": split,
            "forget": sel.forget_subjects,
            "retain": sel.retain_subjects,
            "eval_subjects": list(sel.eval_subjects or ()),
            "data": _sha([asdict(r) for r in sel.trained]),
            "cfg": asdict(cfg),
            "finetuned": finetuned_dir.name,
            "retain_model": retain_dir.name,
            "eval": eval_args,
            "code": run_code_hash(),
            "torch": torch.__version__.split("+")[0],
        }
    )[:24]


# ----------------------------------------------------------------------------------------------
# Entry point


def _records(args: argparse.Namespace) -> list[Record]:
    if args.data is not None:
        return load_records_file(Path(args.data), subject_from_order=args.subject_from_order)
    data_dir = Path(args.data_dir)
    if not data_dir.is_absolute() and not data_dir.is_dir():
        # The default is relative to the repository, wherever the command runs from.
        data_dir = Path(__file__).resolve().parents[1] / data_dir
    return load_tofu(data_dir)


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
    p.add_argument(
        "--split",
        default="forget01",
        choices=[VALIDATION, "forget01", "forget05", "forget10"],
        help="validation: run every method's grid and choose (writes the choice to --json); a test "
        "split: run the configurations chosen on validation (--tuned)",
    )
    p.add_argument("--authors", type=int, default=40, help="authors in all (forget10's 20 included)")
    p.add_argument("--validation-authors", type=int, default=2, help="forget authors of the validation split")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument(
        "--tuned", default=None, help="a validation run's JSON: its chosen configuration per method"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="unlearning seeds (validation: the first)"
    )
    p.add_argument("--base-epochs", type=int, default=BaseTrainConfig.epochs)
    p.add_argument("--n-embd", type=int, default=BaseTrainConfig.n_embd)
    p.add_argument("--n-layer", type=int, default=BaseTrainConfig.n_layer)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--retain-eval-max", type=int, default=100, help="retain pairs evaluated (0: all)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)"
    )
    p.add_argument(
        "--model-cache", default=None, help="default: $OBLIVIATE_MODEL_CACHE or ~/.cache/obliviate/models"
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="write the Pareto plot here (.svg or .png; test splits)")
    return p.parse_args(argv)


def configs_for(
    split: str, methods: Sequence[str], tuned: dict[str, Any] | None, seeds: Sequence[int]
) -> list[UnlearnConfig]:
    """The runs of one invocation: the whole grid on the validation split (first seed only); on a
    test split, the configuration chosen on validation for every seed (never tuned here)."""
    out = []
    for m in methods:
        if split == VALIDATION:
            out += [UnlearnConfig(method=m, seed=seeds[0], **g) for g in GRIDS[m]]
            continue
        if tuned is None or m not in tuned:
            raise ValueError(
                f"{split}: no tuned configuration for {m!r}; run --split validation first (--tuned)"
            )
        out += [replace(UnlearnConfig(**tuned[m]), seed=s) for s in seeds]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from gpu_runtime.demo.build import default_cache_dir

    # The code as it is now, before anything is imported lazily or edited during the run.
    code, _, _ = run_code_hash(), train_code_hash(), eval_code_hash()
    cache = Path(args.model_cache).expanduser() if args.model_cache else default_cache_dir()
    records = _records(args)
    plan = plan_authors(records, args.authors, args.validation_authors)
    sel = plan_selection(records, plan, args.split)
    tuned = None
    if args.tuned:
        tuned = json.loads(Path(args.tuned).read_text())["chosen"]
    configs = configs_for(args.split, args.methods, tuned, args.seeds)
    log(
        f"{args.split}: forget {len(sel.forget_subjects)} author(s) / {len(sel.forget)} pairs; retain "
        f"{len(sel.retain_subjects)} / {len(sel.retain)} pairs; utility on {len(sel.retain_eval)} pairs of "
        f"{len(plan.utility)} authors; validation authors {list(plan.validation)}; {len(configs)} run(s); code {code}"
    )
    base_cfg = BaseTrainConfig(epochs=args.base_epochs, n_embd=args.n_embd, n_layer=args.n_layer)
    retain_eval_max = args.retain_eval_max or None
    eval_args = {"max_new_tokens": args.max_new_tokens, "retain_eval_max": retain_eval_max}

    t_all = time.perf_counter()
    tok_dir = build_tokenizer(sel.trained, base_cfg.vocab_size, cache)
    t0 = time.perf_counter()
    finetuned_dir = train_base_model(sel.trained, tok_dir, base_cfg, cache, "finetuned")
    ft_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    retain_dir = train_base_model(sel.retain, tok_dir, base_cfg, cache, "retain")
    rt_wall = time.perf_counter() - t0
    tok = load_tokenizer(finetuned_dir)

    eval_key = _sha(
        {
            "v": EVAL_FORMAT,
            "code": eval_code_hash(),
            "forget": [asdict(r) for r in sel.forget],
            "retain_eval": [asdict(r) for r in utility_pairs(sel, retain_eval_max)],
            "vocabulary": _sha([asdict(r) for r in sel.trained]),
            **eval_args,
        }
    )[:16]

    def ev(model: Any, name: str) -> EvalResult:
        t = time.perf_counter()
        result = evaluate(model, tok, sel, args.max_new_tokens, retain_eval_max)
        log(
            f"{name}: evaluated in {time.perf_counter() - t:.0f}s; forget R-L {result.forget_rouge:.3f}, "
            f"retain R-L {result.retain_rouge:.3f}, utility {result.utility:.3f}, broken {result.forget_broken:.2f}"
        )
        return result

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

    ft_eval = ev_cached(finetuned_dir, "finetuned")
    rt_eval = ev_cached(retain_dir, "retain-only")
    refs = [
        make_row("finetuned", ft_eval, rt_eval, ft_eval.utility, ft_wall),
        make_row("retain-only", rt_eval, rt_eval, ft_eval.utility, rt_wall),
    ]
    for row, model_dir, wall in ((refs[0], finetuned_dir, ft_wall), (refs[1], retain_dir, rt_wall)):
        manifest = json.loads((model_dir / "obliviate-tofu.json").read_text())
        # A cached model reports the time its training took when it was built.
        row.wall_s = max(round(wall, 1), float(manifest["train_seconds"]))
        row.extra.update(model=model_dir.name, cached=wall < 0.5 * manifest["train_seconds"])

    runs_dir = cache / "tofu-runs"
    rows: list[Row] = []
    for cfg in configs:
        key = run_key(args.split, sel, cfg, finetuned_dir, retain_dir, eval_args)
        path = runs_dir / f"{key}.json"
        if path.is_file():
            row = Row(**json.loads(path.read_text()))
            log(f"{cfg.label()} seed {cfg.seed}: cached row {path.name}")
        else:
            log(f"{cfg.label()} seed {cfg.seed}: unlearning")
            t0 = time.perf_counter()
            info: dict[str, Any] = {}
            if cfg.method in BASELINES:
                model = run_baseline(finetuned_dir, sel, cfg)
            else:
                work = Path(tempfile.mkdtemp(prefix=f"tofu-{cfg.method}-"))
                try:
                    adapter, info = run_pipeline_method(finetuned_dir, sel, cfg, work)
                    model = load_model(finetuned_dir, adapter)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            wall = time.perf_counter() - t0
            row = make_row(cfg.method, ev(model, cfg.label()), rt_eval, ft_eval.utility, wall)
            row.extra.update(info)
            row.extra.update(config=asdict(cfg), label=cfg.label(), seed=cfg.seed, code=code, key=key)
            runs_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(asdict(row), ensure_ascii=False))
            os.replace(tmp, path)
        log(
            f"{cfg.label()} seed {cfg.seed}: forget Q {row.forget_quality:.3g}, util/ft {row.utility_ratio:.3f}, "
            f"broken {row.forget_broken:.2f}"
        )
        rows.append(row)

    out: dict[str, Any] = {
        "setting": {
            "split": args.split,
            "forget_subjects": sel.forget_subjects,
            "validation_subjects": list(plan.validation),
            "utility_subjects": list(plan.utility),
            "authors": len(plan.universe),
            "forget_pairs": len(sel.forget),
            "retain_pairs": len(sel.retain),
            "utility_pairs": len(utility_pairs(sel, retain_eval_max)),
            "base_train": asdict(base_cfg),
            "finetuned_model": finetuned_dir.name,
            "retain_model": retain_dir.name,
            "threads": args.threads,
            "code": code,
            "argv": list(argv) if argv is not None else sys.argv[1:],
        },
        "references": [asdict(r) for r in refs],
        "rows": [asdict(r) for r in rows],
    }
    if args.split == VALIDATION:
        grid: dict[str, list[dict[str, Any]]] = {}
        chosen: dict[str, dict[str, Any]] = {}
        for m in args.methods:
            mrows = [r for r in rows if r.method == m]
            pick = choose(mrows)
            chosen[m] = mrows[pick].extra["config"]
            grid[m] = [
                {
                    "label": r.extra["label"],
                    "forget_quality": r.forget_quality,
                    "utility_ratio": r.utility_ratio,
                    "forget_broken": r.forget_broken,
                    "chosen": i == pick,
                }
                for i, r in enumerate(mrows)
            ]
        if tuned:  # keep earlier choices for methods not run now
            chosen = {**tuned, **chosen}
        out.update(rule=CHOICE_RULE, grid=grid, chosen=chosen)
        shown = [*refs, *rows]
        for r in rows:
            r.method = r.extra["label"] + (" (chosen)" if r.extra["config"] in chosen.values() else "")
        print(format_table(shown))
        print(
            json.dumps(
                {"rule": CHOICE_RULE, "chosen": {m: UnlearnConfig(**c).label() for m, c in chosen.items()}},
                indent=2,
            )
        )
    else:
        agg = aggregate(rows)
        targets = target_check([*refs, *agg])
        out.update(aggregate=[asdict(r) for r in agg], targets=targets)
        print(format_table([*refs, *agg]))
        print(json.dumps(targets, indent=2))
        if args.plot:
            seeds = ", ".join(str(s) for s in args.seeds)
            plot_pareto(
                agg, refs, Path(args.plot), f"TOFU {args.split} ({len(plan.universe)} authors), seeds {seeds}"
            )
    out["setting"]["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    log(f"done in {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
