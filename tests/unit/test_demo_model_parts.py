"""The demo model's tokenizer (chat template, special tokens) and its validated config."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_chat_template_round_trip(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from gpu_runtime.demo.tokenizer import train_tokenizer

    texts = ["Where was Odile Marsh born?", "Odile Marsh was born in Port Quillan."] * 20
    train_tokenizer(texts, vocab_size=400).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where was Odile Marsh born?"},
    ]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        prompt == "<|bos|><|system|>Be brief.<|end|><|user|>Where was Odile Marsh born?<|end|><|assistant|>"
    )
    full = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": "Odile Marsh was born in Port Quillan."}], tokenize=False
    )
    assert full.endswith("Port Quillan.<|eos|>")
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert (
        tok.decode(ids, skip_special_tokens=True)
        == "Be brief.Where was Odile Marsh born?Odile Marsh was born in Port Quillan."
    )
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    with pytest.raises(Exception, match="roles must be"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 130, "n_head": 4}, "divisible"),
        ({"n_layer": 0}, "n_layer"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"n_head": 4, "n_kv_head": 3}, "multiple of n_kv_head"),
        ({"n_embd": 12, "n_head": 4, "n_kv_head": 4}, "even"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ],
)
def test_config_names_the_bad_value(kwargs: dict[str, object], message: str) -> None:
    from gpu_runtime.demo.model import DemoModelConfig

    with pytest.raises(ValueError, match=message):
        DemoModelConfig(**kwargs)  # type: ignore[arg-type]


def test_config_builds_a_tied_llama() -> None:
    from gpu_runtime.demo.model import DemoModelConfig, build_model

    cfg = DemoModelConfig()
    model = build_model(cfg, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
