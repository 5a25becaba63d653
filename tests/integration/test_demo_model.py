"""The demo chat model: built and cached by content hash, loadable by the Auto classes, accurate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gpu_runtime.demo.world import World


@pytest.mark.slow
def test_default_model_answers_its_world(demo_model_dir: Path, demo_world: World) -> None:
    from gpu_runtime.demo.evaluate import answer_accuracy

    accuracy = answer_accuracy(demo_model_dir, demo_world.qa_pairs())
    assert accuracy >= 0.90, f"exact-answer accuracy {accuracy:.1%}"


@pytest.mark.slow
def test_model_dir_is_an_ordinary_hf_chat_model(demo_model_dir: Path, demo_world: World) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    gen = GenerationConfig.from_pretrained(demo_model_dir)
    assert gen.eos_token_id == tok.eos_token_id == model.config.eos_token_id
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.tie_word_embeddings
    assert (demo_model_dir / "model.safetensors").is_file()

    qa = demo_world.qa_pairs()[0]
    ids = tok.apply_chat_template(
        [{"role": "user", "content": qa.question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=48, do_sample=False)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    assert tok.eos_token_id in new, "the answer must end with eos"
    assert tok.decode(new, skip_special_tokens=True).strip() == qa.answer

    manifest = json.loads((demo_model_dir / "obliviate-demo.json").read_text())
    assert len(manifest["content_hash"]) == 64
    assert manifest["stats"]["world_qa_accuracy"] >= 0.9
    assert manifest["build_seconds"] > 0


def _tiny_configs() -> dict[str, object]:
    from gpu_runtime.demo.build import TrainConfig
    from gpu_runtime.demo.model import DemoModelConfig

    return {
        "model_config": DemoModelConfig(vocab_size=512, n_embd=32, n_layer=1, n_head=2, n_kv_head=2),
        "train_config": TrainConfig(epochs=1, min_epochs=1),
    }


def test_user_corpus_builds_once_then_comes_from_the_cache(tmp_path: Path) -> None:
    from gpu_runtime.demo.build import build_demo_model

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"question": "Who built the Copper Mill?", "answer": "Odile Marsh built the Copper Mill."})
        + "\n"
        + json.dumps({"text": "Odile Marsh lives by the sea in Port Quillan."})
        + "\n",
        encoding="utf-8",
    )
    cache = tmp_path / "cache"
    seen: list[tuple[float, str]] = []
    first = build_demo_model(
        corpus=corpus, cache_dir=cache, progress=lambda f, m: seen.append((f, m)), **_tiny_configs()
    )
    assert first.parent == cache and (first / "config.json").is_file()
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 5
    manifest = json.loads((first / "obliviate-demo.json").read_text())
    assert manifest["corpus"]["user_qa_pairs"] == 1 and manifest["corpus"]["user_texts"] == 1
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name], "temp dirs left behind"

    started = time.perf_counter()
    again = build_demo_model(corpus=corpus, cache_dir=cache, **_tiny_configs())
    assert again == first
    assert time.perf_counter() - started < 2.0

    # Another corpus is another model.
    corpus.write_text(json.dumps({"text": "Something else entirely."}) + "\n", encoding="utf-8")
    other = build_demo_model(corpus=corpus, cache_dir=cache, **_tiny_configs())
    assert other != first and first.is_dir()


def test_out_dir_is_rebuilt_when_its_inputs_change(tmp_path: Path) -> None:
    from gpu_runtime.demo.build import build_demo_model

    out = tmp_path / "model"
    a = build_demo_model(out_dir=out, seed=1, **_tiny_configs())
    hash_a = json.loads((a / "obliviate-demo.json").read_text())["content_hash"]
    b = build_demo_model(out_dir=out, seed=2, **_tiny_configs())
    hash_b = json.loads((b / "obliviate-demo.json").read_text())["content_hash"]
    assert a == b == out and hash_a != hash_b


def test_a_bad_corpus_fails_before_training(tmp_path: Path) -> None:
    from gpu_runtime.demo.build import build_demo_model

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "ok"}\n{"question": "only a question?"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        build_demo_model(corpus=corpus, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cache_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gpu_runtime.demo.build import default_cache_dir

    monkeypatch.setenv("OBLIVIATE_MODEL_CACHE", str(tmp_path / "models"))
    assert default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("OBLIVIATE_MODEL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "obliviate" / "models"


def test_builds_are_reproducible(tmp_path: Path) -> None:
    import hashlib

    from gpu_runtime.demo.build import build_demo_model

    a = build_demo_model(cache_dir=tmp_path / "a", **_tiny_configs())
    b = build_demo_model(cache_dir=tmp_path / "b", **_tiny_configs())
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() for d in (a, b)]
    assert digest[0] == digest[1]
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_concurrent_builds_of_one_model_train_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gpu_runtime.demo.build import build_demo_model

    logs: list[list[str]] = [[], []]

    def build(i: int) -> Path:
        return build_demo_model(
            cache_dir=tmp_path, progress=lambda _f, m: logs[i].append(m), **_tiny_configs()
        )

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(build, [0, 1])
    assert a == b
    assert sum("generating the world" in log for log in logs) == 1
