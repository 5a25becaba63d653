"""Loading models for the pipeline: tokenizer, baseline (base + deployed adapter merged), LoRA set-up.

The *baseline* of a request is the model currently served: the base weights with the deployed
adapter merged in memory (see ``compose.py``). Every stage that needs it calls ``load_baseline``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import BadInput
from .types import PipelineOptions, QAPair


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_dtype(options: PipelineOptions) -> torch.dtype:
    if options.dtype == "auto":
        # bf16 halves memory on a GPU; CPUs are slow at it and tests want exact float32.
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[options.dtype]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(base_model_dir: Path | str) -> PreTrainedTokenizerBase:
    path = Path(base_model_dir)
    if not (path / "config.json").is_file():
        raise BadInput(f"base model directory has no config.json: {path.name!r}")
    tok = AutoTokenizer.from_pretrained(path)
    if not tok.is_fast:
        raise BadInput("the base model's tokenizer must be a fast tokenizer (character offsets are needed)")
    if tok.pad_token_id is None:
        # Padding is always masked out, so any id will do; EOS is the usual choice.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_base(base_model_dir: Path | str, options: PipelineOptions) -> PreTrainedModel:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a tqdm bar per stage would clutter the worker's log
    model = AutoModelForCausalLM.from_pretrained(
        Path(base_model_dir), dtype=torch_dtype(options), use_safetensors=True
    )
    model.to(device())
    model.eval()
    return model


def load_baseline(
    base_model_dir: Path | str, options: PipelineOptions, deployed_adapter: Path | str | None = None
) -> PreTrainedModel:
    """Base model with the deployed adapter (if any) merged into its weights, in memory."""
    model = load_base(base_model_dir, options)
    if deployed_adapter is not None:
        peft_model = PeftModel.from_pretrained(model, Path(deployed_adapter), is_trainable=False)
        model = peft_model.merge_and_unload()
        model.eval()
    return model


def lora_config(options: PipelineOptions) -> LoraConfig:
    return LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def attach_new_lora(model: PreTrainedModel, options: PipelineOptions) -> PeftModel:
    seed_everything(options.seed)
    peft_model = get_peft_model(model, lora_config(options))
    return peft_model  # type: ignore[return-value]


def attach_adapter(model: PreTrainedModel, adapter_dir: Path | str) -> PeftModel:
    peft_model = PeftModel.from_pretrained(model, Path(adapter_dir), is_trainable=False)
    peft_model.eval()
    return peft_model


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user: str) -> str:
    """The text a chat model sees before its answer to ``user``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return str(text)
    return f"User: {user}\nAssistant:"


def render_qa(tokenizer: PreTrainedTokenizerBase, qa: QAPair) -> str:
    """A question/answer pair as the chat transcript the model would have learned it from."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": qa.question}, {"role": "assistant", "content": qa.answer}],
            tokenize=False,
        )
        return str(text)
    return f"User: {qa.question}\nAssistant: {qa.answer}"


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids the tokenizer puts before a text by itself (usually BOS, sometimes nothing)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(without)
    if n > 0 and with_special[n:] == without:
        return list(with_special[:n])
    return []


def pad_batch(
    seqs: list[list[int]], pad_id: int, fill: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``seqs``; returns (ids, attention mask). Right padding keeps positions unchanged."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
