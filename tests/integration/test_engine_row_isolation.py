"""One request's failure fails that request only, never the other rows of its batch (issue 11)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gpu_runtime.engine import EngineError, GenerationRequest, InferenceEngine, InvalidRequest
from gpu_runtime.engine.sampling import RowSampling, choose_tokens
from gpu_runtime.engine.testing import build_model_with_adapters

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return build_model_with_adapters(tmp_path_factory.mktemp("isolation"), 1)


@pytest.fixture
def engine(tiny: tuple[Path, list[Path]]) -> Iterator[InferenceEngine]:
    eng = InferenceEngine(tiny[0], max_batch_size=16, max_queue=32, adapter_capacity=2)
    eng.start()
    yield eng
    eng.close()


def test_tiny_top_p_keeps_the_most_likely_token() -> None:
    # 1e-50 rounds to 0 in float32: before the fix every token was dropped and multinomial raised.
    logits = torch.randn(2, 40)
    generator = torch.Generator().manual_seed(3)
    choice = choose_tokens(logits, [RowSampling(1.0, 1e-50, generator, 0), RowSampling(0.0, 1.0, None, 0)])
    assert not choice.errors
    assert choice.token_ids == torch.argmax(logits, dim=-1).tolist()


def test_a_row_whose_sampling_fails_is_reported_alone() -> None:
    logits = torch.randn(3, 40)
    logits[1] = float("nan")
    rows = [RowSampling(1.0, 1.0, torch.Generator().manual_seed(i), 0) for i in range(3)]
    choice = choose_tokens(logits, rows)
    assert set(choice.errors) == {1}
    assert len(choice.token_ids) == 3


def test_out_of_range_seed_is_refused_before_the_batch() -> None:
    with pytest.raises(InvalidRequest, match="seed"):
        GenerationRequest(prompt="x", seed=2**63, temperature=1.0)
    GenerationRequest(prompt="x", seed=2**63 - 1, temperature=1.0)
    GenerationRequest(prompt="x", seed=-(2**63), temperature=1.0)


async def test_bad_rows_fail_alone_and_the_batch_finishes(engine: InferenceEngine) -> None:
    def good(i: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=f"Numbers: {i}", max_tokens=8, temperature=1.0, seed=i, ignore_eos=True
        )

    # A value that slipped past validation (a seed torch cannot take) fails while its row is set up.
    bad_seed = GenerationRequest(prompt="Numbers:", max_tokens=8, temperature=1.0, seed=1)
    object.__setattr__(bad_seed, "seed", 2**64)
    # top_p below float32's resolution: used to raise inside the shared sampling step.
    tiny_top_p = GenerationRequest(prompt="Numbers:", max_tokens=8, temperature=0.7, top_p=1e-50, seed=5)
    results = await asyncio.gather(
        *(engine.generate(good(i)) for i in range(4)),
        engine.generate(bad_seed),
        engine.generate(tiny_top_p),
        *(engine.generate(good(i)) for i in range(4, 8)),
        return_exceptions=True,
    )
    others = results[:4] + results[6:]
    assert all(not isinstance(r, BaseException) for r in others), others
    assert all(len(r.token_ids) == 8 for r in others)  # type: ignore[union-attr]
    assert isinstance(results[4], EngineError) and "for this request" in str(results[4])
    assert not isinstance(results[5], BaseException), results[5]
    # The engine keeps serving.
    again = await engine.generate(good(9))
    assert len(again.token_ids) == 8
