"""The official ``openai`` client, unchanged, against a live gateway on loopback (tiny random Llama)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.serving import LiveGateway, gateway_factory, one_torch_thread, tiny_model

__all__ = ["gateway_factory", "one_torch_thread", "tiny_model"]

pytestmark = pytest.mark.timeout(180)

CHAT = [{"role": "user", "content": "Ada Lovelace wrote"}]


@pytest.fixture
def gw(gateway_factory: Any) -> LiveGateway:
    return gateway_factory()  # type: ignore[no-any-return]


@pytest.fixture
def client(gw: LiveGateway) -> Iterator[openai.OpenAI]:
    # An operator key: the only role that may query the base model, which most tests here use.
    with openai.OpenAI(
        base_url=gw.base_url, api_key=gw.key("acme", "operator"), max_retries=0, timeout=60
    ) as c:
        yield c


def test_models_lists_alias_base_and_own_adapters(
    gw: LiveGateway, client: openai.OpenAI, tiny_model: tuple[Path, list[Path]]
) -> None:
    rid = gw.ready_request(tiny_model[1][0], tenant="acme")
    other = gw.ready_request(tiny_model[1][1], tenant="globex")
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == ["base", "chat"]
    assert f"adapter:{rid}" in ids
    assert f"adapter:{other}" not in ids  # another tenant's adapter is invisible
    chat = client.models.retrieve("chat")
    assert chat.model_extra is not None and chat.model_extra["version"] == 0
    # No tenant key (submitter, reviewer, admin) sees or gets the base model: only operator keys.
    for role in ("submitter", "reviewer", "admin"):
        with openai.OpenAI(base_url=gw.base_url, api_key=gw.key("acme", role), max_retries=0) as sub:
            assert "base" not in [m.id for m in sub.models.list()]
            with pytest.raises(openai.PermissionDeniedError) as denied:
                sub.chat.completions.create(model="base", messages=CHAT, max_tokens=4)
            assert denied.value.body["param"] == "model"  # type: ignore[index]
            assert denied.value.code == "model_forbidden"


def test_chat_completion_sync(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="chat", messages=CHAT, max_tokens=8, temperature=0)
    assert out.object == "chat.completion"
    assert out.model == "chat"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage is not None and out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.system_fingerprint == "fp_base"  # nothing deployed yet: the alias serves the base model
    again = client.chat.completions.create(model="chat", messages=CHAT, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == out.choices[0].message.content  # greedy is deterministic


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="base", messages=CHAT, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model="base",
        messages=CHAT,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == [whole.choices[0].finish_reason]
    # include_usage: a last chunk with no choices and the usage; usage null before.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_and_stop_sequences(client: openai.OpenAI) -> None:
    out = client.completions.create(model="base", prompt="The quick brown", max_tokens=12, temperature=0)
    assert out.object == "text_completion"
    text = out.choices[0].text
    assert out.usage is not None and out.usage.completion_tokens >= 1
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="base", prompt="The quick brown", max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == text
    if len(text.strip()) > 2:
        stop = text.strip()[1:3]
        cut = client.completions.create(
            model="base", prompt="The quick brown", max_tokens=12, temperature=0, stop=[stop]
        )
        assert stop not in cut.choices[0].text
        assert text.startswith(cut.choices[0].text)
        assert cut.choices[0].finish_reason == "stop"


def test_logprobs_in_openai_shape(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="base", messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == out.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)
        assert entry.bytes == list(entry.token.encode())
    streamed = client.chat.completions.create(
        model="base", messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2, stream=True
    )
    entries = [
        e
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert [e.token for e in entries] == [e.token for e in content]
    legacy = client.completions.create(
        model="base", prompt="Prices rise", max_tokens=4, temperature=0, logprobs=2
    )
    lp = legacy.choices[0].logprobs
    assert (
        lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    )
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(top) <= 2 for top in lp.top_logprobs)


def test_async_client_concurrent_requests(gw: LiveGateway) -> None:
    key = gw.key("acme", "operator")

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as client:

            async def one(i: int) -> str:
                if i % 2:
                    parts = []
                    stream = await client.chat.completions.create(
                        model="base", messages=CHAT, max_tokens=6, temperature=0, stream=True
                    )
                    async for chunk in stream:
                        if chunk.choices:
                            parts.append(chunk.choices[0].delta.content or "")
                    return "".join(parts)
                out = await client.chat.completions.create(
                    model="base", messages=CHAT, max_tokens=6, temperature=0
                )
                return out.choices[0].message.content or ""

            return list(await asyncio.gather(*(one(i) for i in range(12))))

    answers = asyncio.run(run())
    assert len(set(answers)) == 1, answers  # batched rows give the same greedy answer as alone


def test_sampling_with_seed_is_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        out = client.completions.create(
            model="base", prompt="Numbers:", max_tokens=10, temperature=1.0, top_p=0.95, seed=seed
        )
        return out.choices[0].text

    assert sample(7) == sample(7)


def test_error_cases(gw: LiveGateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="adapter:fr_doesnotexist", messages=CHAT)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="chat", messages=CHAT, temperature=3.5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as bad_n:
        client.chat.completions.create(model="chat", messages=CHAT, n=2)
    assert bad_n.value.param == "n"
    with pytest.raises(openai.BadRequestError) as bad_top:
        client.chat.completions.create(model="chat", messages=CHAT, top_logprobs=2)
    assert bad_top.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="chat", prompt="Prices rise " * 400, max_tokens=10)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="chat", messages=[])
    assert empty.value.param == "messages"
    with openai.OpenAI(base_url=gw.base_url, api_key="obl_wrong", max_retries=0) as anonymous:
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()


def test_other_tenants_adapter_is_not_found(gw: LiveGateway, tiny_model: tuple[Path, list[Path]]) -> None:
    rid = gw.ready_request(tiny_model[1][2], tenant="acme")
    with openai.OpenAI(base_url=gw.base_url, api_key=gw.key("acme", "submitter"), max_retries=0) as own:
        out = own.chat.completions.create(model=f"adapter:{rid}", messages=CHAT, max_tokens=6, temperature=0)
        assert out.system_fingerprint and out.system_fingerprint != "fp_base"
    with openai.OpenAI(base_url=gw.base_url, api_key=gw.key("globex", "admin"), max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            other.chat.completions.create(model=f"adapter:{rid}", messages=CHAT, max_tokens=6)


def test_full_queue_answers_429_with_retry_after(gateway_factory: Any) -> None:
    gw = gateway_factory(engine_max_batch=1, engine_max_queue=1)
    key = gw.key("acme", "operator")

    def call(_: int) -> str:
        with openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=60) as c:
            try:
                c.completions.create(model="base", prompt="Numbers:", max_tokens=24, temperature=0)
                return "ok"
            except openai.RateLimitError as exc:
                assert exc.response.headers.get("retry-after", "").isdigit()
                assert exc.code == "rate_limit_exceeded"
                return "429"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(8)))
    assert "429" in outcomes and "ok" in outcomes


def test_client_going_away_cancels_the_generation(gw: LiveGateway, client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="base", prompt="Numbers:", max_tokens=400, temperature=0, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while gw.engine.stats().running or gw.engine.stats().waiting:
        assert time.monotonic() < deadline, "the abandoned request kept its batch slot"
        time.sleep(0.05)
    assert gw.engine.stats().tokens_generated < 400
