"""Engine behaviour on a tiny random Llama with random LoRA adapters (CPU, a few seconds)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gpu_runtime.engine import (
    ContextLengthExceeded,
    GenerationRequest,
    InferenceEngine,
    QueueFull,
    UnknownModel,
    adapter_hash,
)
from gpu_runtime.engine.testing import build_model_with_adapters

pytestmark = pytest.mark.timeout(60)

PROMPTS = ["The quick brown", "Ada Lovelace wrote", "Numbers: 1 2", "User: What is the capital"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # A tiny model gains nothing from intra-op threads, and on a shared CPU their spin-waits cost 5-10x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return build_model_with_adapters(tmp_path_factory.mktemp("engine"), 3)


@pytest.fixture
def engine(tiny: tuple[Path, list[Path]]) -> Iterator[InferenceEngine]:
    model_dir, adapters = tiny
    eng = InferenceEngine(model_dir, max_batch_size=8, max_queue=16, adapter_capacity=4)
    eng.start()
    for i, path in enumerate(adapters):
        eng.load_adapter(f"ad{i}.v1", path, expected_hash=adapter_hash(path))
    yield eng
    eng.close()


def greedy(prompt: str, model: str | None, n: int = 10, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, model=model, max_tokens=n, ignore_eos=True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["stacked", "peft"])
async def test_mixed_adapter_batch_matches_each_adapter_alone(
    engine: InferenceEngine, tiny: tuple[Path, list[Path]], backend: str
) -> None:
    if backend == "peft":
        engine.close()
        engine = InferenceEngine(tiny[0], max_batch_size=8, lora_backend="peft")
        engine.start()
        for i, path in enumerate(tiny[1]):
            engine.load_adapter(f"ad{i}.v1", path)
    assert engine.active_lora_backend == backend
    models = [None, "ad0.v1", "ad1.v1", "ad2.v1"]
    cases = [(p, m) for p in PROMPTS[:2] for m in models]
    alone = [(await engine.generate(greedy(p, m))).token_ids for p, m in cases]
    steps_before = engine.stats().steps
    batched = await asyncio.gather(*(engine.generate(greedy(p, m)) for p, m in cases))
    assert [r.token_ids for r in batched] == alone
    # One wave of 8 rows x 10 tokens takes about 9 decode steps, not 8 x 9.
    assert engine.stats().steps - steps_before < 2 * 10
    # The adapters really change the output, so the comparison above means something.
    assert len({tuple(t) for t in alone[:4]}) == 4
    assert [r.adapter_id for r in batched[:4]] == models
    if backend == "peft":
        engine.close()


async def test_rows_join_a_running_batch(engine: InferenceEngine) -> None:
    long_req = greedy(PROMPTS[0], "ad0.v1", n=40)
    late = [
        greedy(p, m, n=n)
        for p, m, n in zip(PROMPTS, [None, "ad1.v1", "ad2.v1", "ad0.v1"], [5, 12, 20, 3], strict=True)
    ]
    expected_long = (await engine.generate(long_req)).token_ids
    expected_late = [(await engine.generate(r)).token_ids for r in late]

    stream = await engine.stream(long_req)
    got_long: list[int] = []
    late_tasks: list[asyncio.Task[object]] = []
    async for event in stream:
        got_long.append(event.token_id)
        if len(got_long) == 6:  # join mid-generation, with different prompt lengths and adapters
            late_tasks = [asyncio.create_task(engine.generate(r)) for r in late]
    results = await asyncio.gather(*late_tasks)
    assert got_long == expected_long
    assert [r.token_ids for r in results] == expected_late  # type: ignore[attr-defined]


async def test_stream_deltas_concatenate_to_full_text(engine: InferenceEngine) -> None:
    req = greedy(PROMPTS[1], "ad1.v1", n=24)
    full = await engine.generate(req)
    stream = await engine.stream(req)
    events = [e async for e in stream]
    assert "".join(e.text for e in events) == full.text == stream.result.text  # type: ignore[union-attr]
    assert [e.token_id for e in events] == full.token_ids
    assert events[-1].finish_reason == "length" and all(e.finish_reason is None for e in events[:-1])
    assert events[-1].usage == full.usage
    assert full.usage.prompt_tokens == len(engine.encode(PROMPTS[1])) and full.usage.completion_tokens == 24


async def test_stop_sequences_trim_output(engine: InferenceEngine) -> None:
    full = await engine.generate(greedy(PROMPTS[0], "ad2.v1", n=30))
    text = full.text
    stop = next(text[i : i + 3] for i in range(4, len(text) - 3) if text[i : i + 3].strip())
    cut = text.find(stop)
    result = await engine.generate(greedy(PROMPTS[0], "ad2.v1", n=30, stop=["never-there", stop]))
    assert result.finish_reason == "stop"
    assert result.text == text[:cut]
    stream = await engine.stream(greedy(PROMPTS[0], "ad2.v1", n=30, stop=[stop]))
    assert "".join([e.text async for e in stream]) == text[:cut]


async def test_seeded_sampling_is_reproducible(engine: InferenceEngine) -> None:
    def req(seed: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=PROMPTS[2],
            model="ad0.v1",
            max_tokens=16,
            temperature=1.2,
            top_p=0.95,
            seed=seed,
            ignore_eos=True,
        )

    first = await engine.generate(req(1))
    # Same seed again, this time batched next to other requests.
    again, *_ = await asyncio.gather(
        engine.generate(req(1)), engine.generate(req(2)), engine.generate(greedy("x", None))
    )
    assert again.token_ids == first.token_ids
    others = [(await engine.generate(req(s))).token_ids for s in (2, 3, 4)]
    assert any(o != first.token_ids for o in others)


async def test_logprobs_are_consistent(engine: InferenceEngine, tiny: tuple[Path, list[Path]]) -> None:
    req = greedy(PROMPTS[3], None, n=8, logprobs=True, top_logprobs=5)
    result = await engine.generate(req)
    assert result.logprobs is not None and len(result.logprobs) == 8
    for tok, lp in zip(result.token_ids, result.logprobs, strict=True):
        assert lp.token_id == tok and lp.logprob <= 0.0
        assert len(lp.top_logprobs) == 5
        assert lp.top_logprobs[0].token_id == tok  # greedy picks the most likely token
        assert math.isclose(lp.top_logprobs[0].logprob, lp.logprob, abs_tol=1e-6)
        assert sum(math.exp(t.logprob) for t in lp.top_logprobs) <= 1.0 + 1e-5
    # The first token's log-probability matches a plain forward pass of the base model.
    model = AutoModelForCausalLM.from_pretrained(tiny[0])
    ids = torch.tensor([engine.encode(PROMPTS[3])])
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
    assert math.isclose(result.logprobs[0].logprob, float(ref[result.token_ids[0]]), abs_tol=1e-4)
    assert math.isclose(float(ref.exp().sum()), 1.0, abs_tol=1e-4)


async def test_queue_full_raises_immediately(tiny: tuple[Path, list[Path]]) -> None:
    eng = InferenceEngine(tiny[0], max_batch_size=1, max_queue=2)
    eng.start()
    try:
        accepted, refused = [], 0
        for _ in range(10):
            try:
                accepted.append(eng.submit(greedy(PROMPTS[0], None, n=20)))
            except QueueFull as exc:
                refused += 1
                assert exc.retry_after > 0
        assert refused >= 6 and 2 <= len(accepted) <= 4
        for h in accepted:
            while not isinstance(item := await h.queue.get(), type(None)) and not hasattr(
                item, "finish_reason"
            ):
                pass
            assert item.finish_reason == "length"  # type: ignore[union-attr]
        assert eng.stats().waiting == 0
    finally:
        eng.close()


async def test_cancelled_stream_frees_its_slot(engine: InferenceEngine) -> None:
    stream = await engine.stream(greedy(PROMPTS[0], "ad0.v1", n=200))
    async for _ in stream:
        break
    await stream.aclose()
    for _ in range(200):
        if engine.stats().running == 0 and all(i.in_flight == 0 for i in engine.loaded_adapters()):
            break
        await asyncio.sleep(0.02)
    assert engine.stats().running == 0
    assert all(i.in_flight == 0 for i in engine.loaded_adapters())


async def test_request_errors(engine: InferenceEngine) -> None:
    with pytest.raises(UnknownModel):
        await engine.generate(greedy("hi", "no-such-model"))
    with pytest.raises(ContextLengthExceeded):
        await engine.generate(greedy("hi", None, n=engine.max_context))


async def test_render_chat_uses_template(engine: InferenceEngine) -> None:
    ids = engine.render_chat([{"role": "user", "content": "Hello there"}])
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>\n")
    result = await engine.generate(GenerationRequest(prompt=ids, model="ad1.v1", max_tokens=5))
    assert result.usage.prompt_tokens == len(ids)


async def test_score_matches_generation_logprobs(engine: InferenceEngine) -> None:
    prompt = engine.encode(PROMPTS[0])
    for model in (None, "ad1.v1"):
        result = await engine.generate(greedy(PROMPTS[0], model, n=6, logprobs=True))
        scored = await engine.ascore(model, prompt, result.token_ids)
        assert result.logprobs is not None
        for got, lp in zip(scored, result.logprobs, strict=True):
            assert math.isclose(got, lp.logprob, abs_tol=1e-4)
