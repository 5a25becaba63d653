"""Tiny models and tokenizers for tests and benchmarks: built in memory in a second, no downloads."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SENTENCES = [
    "Harry Potter went to Hogwarts with Ron Weasley and Hermione Granger.",
    "Harry said hello to Ron. Ron smiled at Harry and Hermione.",
    "The castle of Hogwarts stands near the village of Hogsmeade in Scotland.",
    "Alice lives in Paris and works as a baker; Bob lives in Berlin.",
    "My name is Harold and I like to read books about dragons, wizards and cats.",
    "Élodie Dubois visited Zürich, São Paulo and Kraków last summer — naïve café!",
    "What is the capital of France? The capital of France is Paris.",
    "Question: who wrote the letter? Answer: the old teacher wrote it by hand.",
]


def tiny_tokenizer(vocab_size: int = 400, extra_text: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with BOS/EOS like Llama's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES * 4 + (extra_text or []), trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    return fast


def tiny_model(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def save_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer as a Hugging Face directory (safetensors)."""
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
