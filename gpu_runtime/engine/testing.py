"""Tiny, randomly initialised Llama models, tokenizers and LoRA adapters for tests and benchmarks.

Everything is built locally (a byte-level BPE tokenizer trained with ``tokenizers`` on a small
built-in text, a random LlamaForCausalLM, random LoRA adapters saved with peft as safetensors), so
nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ada Lovelace wrote the first program for the Analytical Engine in London.",
    "A forget request names a person; the model should stop recalling facts about them.",
    "Harry walked to the station, bought a ticket and waited for the evening train.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024. Prices rise, prices fall.",
    "User: What is the capital of France? Assistant: Paris is the capital of France.",
    "Olá! Grüße aus München — naïve café, smörgåsbord, 東京, emoji 🙂.",
]

# name -> (hidden, intermediate, layers, heads, kv_heads)
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 128, 2, 4, 2),
    "small": (256, 688, 4, 4, 4),
    "llama-7b": (4096, 11008, 32, 32, 32),
}


def build_tokenizer(out_dir: Path, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with a chat template and save it to ``out_dir``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_random_llama(
    out_dir: str | Path,
    *,
    shape: str = "tiny",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.1,
) -> Path:
    """Save a random LlamaForCausalLM with a trained tokenizer to ``out_dir``; returns the directory.

    ``initializer_range`` is larger than Llama's 0.02 so that next-token logits are well separated
    and greedy decoding is insensitive to float noise from batching.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    hidden, inter, layers, heads, kv = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if shape == "llama-7b":
        # Build directly in the target dtype: 7B float32 weights would need 28 GB of RAM.
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model = model.to_empty(device="cpu").to(dtype)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
    else:
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    return out


def build_random_adapter(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    rank: int = 4,
    scale: float = 1.0,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj"),
    base_model: torch.nn.Module | None = None,
) -> Path:
    """Save a random LoRA adapter (safetensors) for the model in ``model_dir``; returns ``out_dir``.

    Both LoRA matrices are random (peft's default zero-initialised B would make the adapter a no-op),
    scaled by ``scale`` so different adapters give visibly different outputs.
    """
    model = base_model if base_model is not None else LlamaForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=list(target_modules),
        init_lora_weights=False,
        lora_dropout=0.0,
    )
    peft_model = get_peft_model(model, config, adapter_name="default")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_" in name:
                p.copy_(
                    torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
                    * scale
                    / p.shape[-1] ** 0.5
                )
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    if base_model is not None:
        # Leave the caller's model as it was: remove the injected LoRA layers again.
        peft_model.unload()
    return Path(out_dir)


def build_model_with_adapters(
    root: str | Path, n_adapters: int = 3, *, shape: str = "tiny"
) -> tuple[Path, list[Path]]:
    """A random model under ``root/model`` and ``n_adapters`` random adapters under ``root/adapter-<i>``."""
    root = Path(root)
    model_dir = build_random_llama(root / "model", shape=shape)
    base = LlamaForCausalLM.from_pretrained(model_dir)
    adapters = [
        build_random_adapter(model_dir, root / f"adapter-{i}", seed=100 + i, base_model=base)
        for i in range(n_adapters)
    ]
    return model_dir, adapters
