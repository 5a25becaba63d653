"""Builds (trains) the demo chat model from the bundled world and caches it by content hash.

The result is an ordinary Hugging Face model directory (config, safetensors weights, tokenizer with
chat template, generation config) plus `obliviate-demo.json` with the content hash and build stats.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast

from gpu_runtime.demo.corpus import load_corpus_jsonl
from gpu_runtime.demo.evaluate import generate_answers, is_correct
from gpu_runtime.demo.model import DemoModelConfig, build_model
from gpu_runtime.demo.tokenizer import train_tokenizer
from gpu_runtime.demo.world import QA, build_world

__all__ = [
    "MANIFEST_NAME",
    "TrainConfig",
    "build_demo_model",
    "default_cache_dir",
    "default_demo_model_dir",
    "load_corpus_jsonl",
]

MANIFEST_NAME = "obliviate-demo.json"
CACHE_ENV = "OBLIVIATE_MODEL_CACHE"
# Bump when the build changes in a way the source hash below would not see.
BUILD_FORMAT = 1
_SOURCES = ("world.py", "corpus.py", "tokenizer.py", "model.py", "build.py")

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Epochs are capped by a token budget so big user corpora stay bounded."""

    epochs: int = 40
    min_epochs: int = 8
    token_budget: int = 700_000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_frac: float = 0.03
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    qa_repeats: int = 1
    answer_only_loss: bool = True
    # One thread: at this model size a second thread gains little on an idle machine, and on a
    # shared one OpenMP barriers make two threads several times slower (measured: 7x).
    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.epochs < 1 or self.min_epochs < 1 or self.batch_size < 1 or self.qa_repeats < 1:
            raise ValueError(f"epochs, min_epochs, batch_size, qa_repeats must be >= 1: {self}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.warmup_frac < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"warmup_frac and min_lr_ratio must be in [0, 1): {self}")


@dataclass(frozen=True)
class _Example:
    ids: list[int]
    labels: list[int]  # -100 where no loss is taken


# ----------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    """`$OBLIVIATE_MODEL_CACHE`, else `~/.cache/obliviate/models`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "obliviate" / "models"


def _code_version() -> str:
    h = hashlib.sha256(f"format={BUILD_FORMAT}".encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _content_hash(
    corpus_bytes: bytes | None, model_cfg: DemoModelConfig, train_cfg: TrainConfig, seed: int
) -> str:
    payload = {
        "corpus": hashlib.sha256(corpus_bytes).hexdigest() if corpus_bytes is not None else None,
        "model": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "seed": seed,
        "code": _code_version(),
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _read_manifest(model_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(model_dir: Path, content_hash: str) -> bool:
    manifest = _read_manifest(model_dir)
    return (
        manifest is not None
        and manifest.get("content_hash") == content_hash
        and (model_dir / "model.safetensors").is_file()
        and (model_dir / "config.json").is_file()
    )


# ----------------------------------------------------------------------------------------------
# Data


def _chat_example(tok: PreTrainedTokenizerFast, qa: QA, answer_only: bool) -> _Example:
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": qa.question}], tokenize=False, add_generation_prompt=True
    )
    full = tok.apply_chat_template(
        [{"role": "user", "content": qa.question}, {"role": "assistant", "content": qa.answer}],
        tokenize=False,
    )
    assert isinstance(prompt, str) and isinstance(full, str) and full.startswith(prompt)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    ids = p_ids + a_ids
    labels = ([-100] * len(p_ids) + a_ids) if answer_only else list(ids)
    return _Example(ids, labels)


def _text_examples(tok: PreTrainedTokenizerFast, text: str, max_len: int) -> list[_Example]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    body = max_len - 2
    out = []
    for i in range(0, max(len(ids), 1), body):
        chunk = [tok.bos_token_id, *ids[i : i + body], tok.eos_token_id]
        out.append(_Example(chunk, list(chunk)))
    return out


def _batches(
    examples: Sequence[_Example], batch_size: int, rng: random.Random, pad_id: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch of right-padded batches; examples of similar length share a batch to limit padding."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 8
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: len(examples[i].ids))
        for b in range(0, len(chunk), batch_size):
            group = [examples[i] for i in chunk[b : b + batch_size]]
            width = max(len(e.ids) for e in group)
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            labels = torch.full((len(group), width), -100, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for r, e in enumerate(group):
                ids[r, : len(e.ids)] = torch.tensor(e.ids)
                labels[r, : len(e.labels)] = torch.tensor(e.labels)
                mask[r, : len(e.ids)] = 1
            batches.append((ids, labels, mask))
    rng.shuffle(batches)
    return batches


# ----------------------------------------------------------------------------------------------
# Build


def build_demo_model(
    out_dir: Path | None = None,
    corpus: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    seed: int = 0,
    *,
    model_config: DemoModelConfig | None = None,
    train_config: TrainConfig | None = None,
) -> Path:
    """Train the demo model (or find it cached) and return its directory.

    Args:
        out_dir: where the model goes; default `<cache_dir>/demo-<hash>`.
        corpus: optional user JSONL corpus ({"question","answer"} and/or {"text"} lines), trained on
            in addition to the built-in world.
        cache_dir: default `$OBLIVIATE_MODEL_CACHE` or `~/.cache/obliviate/models`.
        progress: called as `progress(fraction_done, message)` throughout the build.
        seed: seeds the world, the initialisation and the data order.
    """
    t0 = time.perf_counter()
    report: Progress = progress or (lambda _f, _m: None)
    model_cfg = model_config or DemoModelConfig()
    train_cfg = train_config or TrainConfig()

    corpus_bytes = Path(corpus).read_bytes() if corpus is not None else None
    user_qa, user_texts = load_corpus_jsonl(corpus) if corpus is not None else ([], [])
    content_hash = _content_hash(corpus_bytes, model_cfg, train_cfg, seed)
    target = (
        Path(out_dir)
        if out_dir is not None
        else (cache_dir or default_cache_dir()) / f"demo-{content_hash[:16]}"
    )
    if _is_complete(target, content_hash):
        report(1.0, f"cached model at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target, report):
        # Another process may have finished the same build while we waited for the lock.
        if _is_complete(target, content_hash):
            report(1.0, f"cached model at {target}")
            return target
        return _build(
            target, content_hash, corpus, user_qa, user_texts, model_cfg, train_cfg, seed, report, t0
        )


@contextmanager
def _build_lock(target: Path, report: Progress) -> Iterator[None]:
    """Serialise builds of the same directory across processes (POSIX advisory lock)."""
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: concurrent builds still publish atomically, just twice
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(0.0, "waiting for another build of the same model")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(
    target: Path,
    content_hash: str,
    corpus: Path | None,
    user_qa: list[QA],
    user_texts: list[str],
    model_cfg: DemoModelConfig,
    train_cfg: TrainConfig,
    seed: int,
    report: Progress,
    t0: float,
) -> Path:
    report(0.0, "generating the world")
    world = build_world(seed=seed)
    qa_pairs = [*world.qa_pairs(), *user_qa]
    texts = [d["text"] for d in world.documents()] + world.general_texts() + user_texts

    report(0.01, "training the tokenizer")
    tok_corpus = [f"{qa.question} {qa.answer}" for qa in qa_pairs] + texts
    tokenizer = train_tokenizer(tok_corpus, vocab_size=model_cfg.vocab_size)

    examples: list[_Example] = []
    for qa in qa_pairs:
        examples.extend([_chat_example(tokenizer, qa, train_cfg.answer_only_loss)] * train_cfg.qa_repeats)
    for text in texts:
        examples.extend(_text_examples(tokenizer, text, model_cfg.max_seq_len))
    epoch_tokens = sum(len(e.ids) for e in examples)
    epochs = max(train_cfg.min_epochs, min(train_cfg.epochs, train_cfg.token_budget // max(epoch_tokens, 1)))
    steps_per_epoch = math.ceil(len(examples) / train_cfg.batch_size)
    total_steps = epochs * steps_per_epoch

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(train_cfg.threads)
    try:
        torch.manual_seed(seed)
        rng = random.Random(seed)
        model = build_model(
            model_cfg,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        n_params = sum(p.numel() for p in model.parameters())
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": train_cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=train_cfg.lr,
            betas=(0.9, 0.98),
        )
        warmup = max(1, int(train_cfg.warmup_frac * total_steps))

        def lr_at(step: int) -> float:
            if step < warmup:
                return train_cfg.lr * (step + 1) / warmup
            t = (step - warmup) / max(1, total_steps - warmup)
            floor = train_cfg.lr * train_cfg.min_lr_ratio
            return floor + (train_cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))

        model.train()
        t_train = time.perf_counter()
        step = 0
        loss_val = float("nan")
        for epoch in range(epochs):
            ema: float | None = None
            for ids, labels, mask in _batches(examples, train_cfg.batch_size, rng, tokenizer.pad_token_id):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                loss_val = float(loss.detach())
                ema = loss_val if ema is None else 0.9 * ema + 0.1 * loss_val
                if step % 4 == 0 or step == total_steps:
                    report(0.02 + 0.9 * step / total_steps, f"epoch {epoch + 1}/{epochs} loss {ema:.3f}")
        train_seconds = time.perf_counter() - t_train
        model.eval()

        report(0.93, "checking answers")
        world_qa = world.qa_pairs()
        generated = generate_answers(model, tokenizer, [qa.question for qa in world_qa])
        accuracy = sum(is_correct(qa.answer, g) for qa, g in zip(world_qa, generated, strict=True)) / len(
            world_qa
        )
    finally:
        torch.set_num_threads(prev_threads)

    report(0.97, "saving")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "name": "obliviate-demo",
            "content_hash": content_hash,
            "code_version": _code_version(),
            "seed": seed,
            "model_config": model_cfg.to_dict(),
            "train_config": asdict(train_cfg),
            "corpus": {
                "user_qa_pairs": len(user_qa),
                "user_texts": len(user_texts),
                "given": corpus is not None,
            },
            "stats": {
                "parameters": n_params,
                "people": len(world.people),
                "qa_pairs": len(qa_pairs),
                "documents": len(texts),
                "examples_per_epoch": len(examples),
                "tokens_per_epoch": epoch_tokens,
                "epochs": epochs,
                "steps": total_steps,
                "final_loss": round(loss_val, 5),
                "world_qa_accuracy": round(accuracy, 4),
                "train_seconds": round(train_seconds, 2),
            },
            "build_seconds": round(time.perf_counter() - t0, 2),
            "torch_threads": train_cfg.threads,
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, target, content_hash)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, f"built in {time.perf_counter() - t0:.0f}s, accuracy {accuracy:.1%}")
    return target


def _publish(tmp: Path, target: Path, content_hash: str) -> None:
    """Move a finished build into place atomically; a concurrent identical build may win the race."""
    if target.exists():
        if _is_complete(target, content_hash):
            return  # someone else finished the same build first
        # A stale or partial directory (e.g. an explicit out_dir rebuilt with a new corpus).
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_complete(target, content_hash):
            raise


def default_demo_model_dir() -> Path:
    """The default demo model's directory in the cache, built first if it is missing."""
    return build_demo_model()
