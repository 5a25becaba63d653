"""The engine on the project's demo chat model (built once per session by the ``demo_model_dir`` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_runtime.engine import GenerationRequest, InferenceEngine, adapter_hash
from gpu_runtime.engine.testing import build_random_adapter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def demo_dir(request: pytest.FixtureRequest) -> Path:
    try:
        return Path(request.getfixturevalue("demo_model_dir"))
    except pytest.FixtureLookupError:
        pytest.skip("the demo_model_dir fixture is not available")


@pytest.fixture(scope="module")
def engine(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceEngine]:
    adapter = build_random_adapter(demo_dir, tmp_path_factory.mktemp("demo-adapter") / "a", seed=1, scale=2.0)
    eng = InferenceEngine(demo_dir, max_batch_size=4)
    eng.start()
    eng.load_adapter("demo-a@v1", adapter, expected_hash=adapter_hash(adapter))
    eng.set_alias("chat", None)
    yield eng
    eng.close()


async def test_demo_model_chat_and_mixed_batch(engine: InferenceEngine) -> None:
    prompt = engine.render_chat([{"role": "user", "content": "Who are you?"}])

    def req(model: str) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, model=model, max_tokens=24)

    base = await engine.generate(req("chat"))
    assert base.text.strip() and base.usage.prompt_tokens == len(prompt)
    adapted = await engine.generate(req("demo-a@v1"))
    together = await asyncio.gather(engine.generate(req("chat")), engine.generate(req("demo-a@v1")))
    assert [r.token_ids for r in together] == [base.token_ids, adapted.token_ids]
    stream = await engine.stream(req("chat"))
    assert "".join([e.text async for e in stream]) == base.text
