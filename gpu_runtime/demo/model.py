"""The demo model's architecture: a compact config that builds a tiny `LlamaForCausalLM`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["DemoModelConfig", "build_model"]


@dataclass(frozen=True)
class DemoModelConfig:
    """Architecture of the demo model (nanoGPT style). Small enough to train in a minute on CPU."""

    vocab_size: int = 1536
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 4
    mlp_ratio: float = 2.75
    max_seq_len: int = 512
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_embd", "n_layer", "n_head", "n_kv_head", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.vocab_size < 264:
            raise ValueError(
                f"vocab_size must cover the 256 bytes plus special tokens, got {self.vocab_size}"
            )
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head size n_embd/n_head ({self.n_embd // self.n_head}) must be even for RoPE")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")

    @property
    def intermediate_size(self) -> int:
        # Rounded up to a multiple of 32 for friendlier matmul shapes.
        return -(-int(self.n_embd * self.mlp_ratio) // 32) * 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def llama_config(self, *, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.n_embd,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.n_layer,
            num_attention_heads=self.n_head,
            num_key_value_heads=self.n_kv_head,
            max_position_embeddings=self.max_seq_len,
            rope_theta=self.rope_theta,
            tie_word_embeddings=True,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            initializer_range=0.02,
            rms_norm_eps=1e-5,
        )


def build_model(
    config: DemoModelConfig, *, bos_token_id: int, eos_token_id: int, pad_token_id: int
) -> LlamaForCausalLM:
    """A freshly initialised model (initialise the torch seed first for reproducibility)."""
    llama = config.llama_config(
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )
    return LlamaForCausalLM(llama)
